"""Walking and rebuilding Keras functional graphs.

With the rest of :mod:`keras_dnas.graph` it reads Keras functional graphs; the private Keras
APIs this takes (nodes by depth, a node's call arguments, a Sequential model's graph) are in
:mod:`keras_dnas._keras`.
"""

import keras
from keras import tree

from keras_dnas import _keras


class GraphNode:
    """One call of an operation in a functional graph.

    Attributes:
        operation: the layer (or ``keras.ops`` operation) called.
        inputs: flat list of input KerasTensors.
        outputs: flat list of output KerasTensors.
        node: the underlying Keras node (for rebuilding).
    """

    __slots__ = ("operation", "inputs", "outputs", "node")

    def __init__(self, node):
        self.node = node
        self.operation = node.operation
        self.inputs = list(node.input_tensors)
        self.outputs = list(node.outputs)


def functional_of(model):
    """The functional graph behind ``model`` or a clear error."""
    if isinstance(model, keras.Sequential):
        fn = _keras.sequential_graph(model)
        if fn is None:
            raise ValueError(
                f"Sequential model '{model.name}' has no known input shape, so its graph "
                "cannot be analysed. Start it with `keras.Input(shape)` or call "
                "`model.build(input_shape)` first."
            )
        return fn
    if isinstance(model, _keras.Functional):
        return model
    if isinstance(model, keras.Model):
        raise ValueError(
            f"Model '{model.name}' ({type(model).__name__}) is a subclassed model: its graph "
            "is Python code that keras_dnas cannot read. Build it as a Functional or "
            "Sequential model, or write it with `kd.layers.Masked*` layers inside a "
            "Functional model and add `kd.DNASCallback` directly. A subclass that adds "
            "training logic (`train_step`, `compute_loss`) around a Functional model: "
            "kd.prepare that model and wrap the result in your subclass; `fit` the wrapper "
            "with kd.DNASCallback (it searches the model wrapped) and kd.freeze the result "
            "of kd.prepare."
        )
    raise ValueError(f"Expected a keras.Model. Received: {type(model).__name__}")


def nodes(model):
    """Graph nodes in execution order (model inputs excluded)."""
    fn = functional_of(model)
    ordered = []
    by_depth = _keras.nodes_by_depth(fn)
    for depth in sorted(by_depth.keys(), reverse=True):
        for node in by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            ordered.append(GraphNode(node))
    return ordered


def model_inputs(model):
    return list(functional_of(model).inputs)


def model_outputs(model):
    return list(functional_of(model).outputs)


def input_layer_name(tensor):
    """Name of the InputLayer that created a model-input KerasTensor."""
    return _keras.producer(tensor).name


def rebuild(model, operation_fn, name=None, model_class=None):
    """Rebuild ``model``'s graph, calling ``operation_fn(op)`` in place of each op.

    ``operation_fn`` is called once per operation (shared layers stay shared).
    Nothing of the original model is modified: new inputs are created and new
    layers are called on them.

    Returns:
        A new functional model (``model_class``, default ``keras.Model``).
    """
    fn = functional_of(model)
    replaced = {}

    def clone_function(op):  # keras.models.clone_model calls it once per operation
        replaced[id(op)] = operation_fn(op)
        return replaced[id(op)]

    # A plain Functional over the same graph: clone_model builds an instance of the source's
    # class (a SearchableModel would re-bind on construction) and recompiles a compiled one.
    view = _keras.Functional(_keras.inputs_struct(fn), _keras.outputs_struct(fn), name=fn.name)
    inputs = tree.map_structure(
        lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype, name=input_layer_name(x)),
        view.input)
    clone = keras.models.clone_model(view, input_tensors=inputs, clone_function=clone_function)
    cls = model_class or keras.Model
    new_model = cls(_keras.inputs_struct(clone), _keras.outputs_struct(clone),
                    name=name or model.name)
    return new_model, replaced


def clone_layer(layer, cls=None, config_update=None, config=None):
    """A fresh, unbuilt copy of ``layer`` (optionally as ``cls`` with a changed config).
    ``config``: ``layer.get_config()``, when the caller has it already.

    Raises:
        ValueError: naming the layer, if its config cannot rebuild it.
    """
    cls = cls or type(layer)
    config = dict(config) if config is not None else layer.get_config()
    if config_update:
        config.update(config_update)
    try:
        # The user's own layers (Lambda with Python code included) are rebuilt
        # from their own config in this process: unsafe deserialisation is fine.
        with _keras.unsafe_deserialization():
            if isinstance(layer, keras.Model):
                return keras.models.clone_model(layer)
            copy = cls.from_config(config)
    except Exception as e:  # noqa: BLE001 - re-raised with the layer's name
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) cannot be rebuilt from its "
            f"get_config(): {e}. Give the layer a complete get_config()."
        ) from e
    if isinstance(layer, keras.layers.Lambda) and isinstance(copy, keras.layers.Lambda):
        # The user's function objects themselves: a Python lambda rebuilt from its bytecode
        # lost the module globals it reads (`lambda t: keras.activations.gelu(t)`: no
        # `keras`), and Keras, failing to infer the Lambda's output shape, raised
        # NotImplementedError while kd.prepare or kd.freeze rebuilt the model.
        for attribute in ("function", "_output_shape", "mask"):
            if callable(getattr(layer, attribute, None)):
                setattr(copy, attribute, getattr(layer, attribute))
    return copy


# ---------------------------------------------------------------------------------------------
# Nested models
# ---------------------------------------------------------------------------------------------


def _is_submodel(op, keep):
    return isinstance(op, keras.Model) and op.name not in keep


def nested_models(model, keep=()):
    """Names of the sub-models ``model`` calls (at any depth), outermost first.

    Sub-models named in ``keep`` are not entered (nor listed).
    """
    found = []

    def visit(m):
        for gnode in nodes(m):
            op = gnode.operation
            if _is_submodel(op, keep) and op.name not in found:
                found.append(op.name)
                visit(op)

    visit(model)
    return found


def _flat_names(model, keep):
    """``{id(layer): name}`` of every layer of the flattened graph (see :func:`flatten`)."""
    entries = []  # (layer, path of sub-model names), each layer once, in graph order
    seen = set()

    def visit(m, path):
        for gnode in nodes(m):
            op = gnode.operation
            # keras.ops operations (e.g. a hand-written hard-swish) are named too: names must be
            # unique across the flat graph, not only inside each sub-model
            if id(op) in seen or not hasattr(op, "name"):
                continue
            seen.add(id(op))
            if _is_submodel(op, keep):
                visit(op, path + (op.name,))
            else:
                entries.append((op, path))

    visit(model, ())
    uses = {}
    for op, _ in entries:
        uses[op.name] = uses.get(op.name, 0) + 1
    taken = {input_layer_name(x) for x in functional_of(model).inputs}
    taken |= {op.name for op, path in entries if not path}  # the outer model keeps its names
    names = {}
    for op, path in entries:
        if not path:
            names[id(op)] = op.name
            continue
        name = op.name
        if uses[name] > 1 or name in taken:
            name = "_".join(path + (op.name,))
            base, i = name, 1
            while name in taken:
                i += 1
                name = f"{base}_{i}"
        taken.add(name)
        names[id(op)] = name
    return names


def flatten(model, keep=(), weights=True):
    """``model`` with every nested Functional / Sequential sub-model inlined: one flat graph.

    The layers of the result are copies of the layers inside the sub-models (with their
    weights), called on the tensors the sub-model was called on, so it computes what
    ``model`` computes. A sub-model called several times is inlined at each call with the
    *same* layer copies, so its weights stay shared. A sub-model called with
    ``training=...`` passes that flag on to its inner layers. ``model`` is not modified.

    Layer names: every layer keeps its name where it is unique in the flattened graph;
    a layer inside a sub-model whose name clashes (with another layer, or with a layer
    of the outer model, which always keeps its names) is renamed
    ``<sub-model>_<layer>`` (with the names of all enclosing sub-models, outermost
    first, and a numeric suffix if that is still taken).

    Args:
        model: a Functional or Sequential ``keras.Model``.
        keep: names of sub-models to keep as they are (one layer of the result).
        weights: copy the weights (``False`` gives the structure only, faster).

    Returns:
        ``model`` itself if it has no sub-model to inline, else a new functional
        ``keras.Model`` with the same name, inputs and outputs.

    Example:

    >>> import keras
    >>> from keras_dnas.graph import walk
    >>> inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")],
    ...                          name="inner")
    >>> x = keras.Input((4,))
    >>> model = keras.Model(x, keras.layers.Dense(2, name="fc")(inner(x)))
    >>> [layer.name for layer in walk.flatten(model).layers[1:]]
    ['inner_fc', 'fc']
    """
    keep = set(keep)
    if not nested_models(model, keep):
        return model
    names = _flat_names(model, keep)
    clones = {}  # id(original layer) -> (original, copy)

    def copy_of(op):
        if id(op) not in clones:
            if isinstance(op, keras.Model):  # a kept sub-model
                copy = keras.models.clone_model(op)
            elif not isinstance(op, keras.layers.Layer):  # a stateless keras.ops operation
                name = names.get(id(op), op.name)
                copy = op if name == op.name else \
                    type(op).from_config({**op.get_config(), "name": name})
            else:
                copy = clone_layer(op, config_update={"name": names[id(op)]})
            clones[id(op)] = (op, copy)
        return clones[id(op)][1]

    def inline(m, tensor_map, training):
        for gnode in nodes(m):
            op = gnode.operation
            args, kwargs = _keras.call_arguments(gnode.node, tensor_map)
            if _is_submodel(op, keep):
                sub = functional_of(op)
                given = tree.flatten(args[0] if args else kwargs.get("inputs"))
                expected = tree.flatten(_keras.inputs_struct(sub))
                if len(given) != len(expected):
                    raise ValueError(
                        f"Nested model '{op.name}' is called on {len(given)} tensors but has "
                        f"{len(expected)} inputs; keras_dnas cannot inline it. Pass "
                        f"exclude=['{op.name}'] to keep it as it is.")
                inner_map = {id(t): v for t, v in zip(expected, given)}
                flag = kwargs.get("training")
                inline(op, inner_map, training if flag is None else flag)
                outs = tree.flatten(_keras.outputs_struct(sub))
                for old, t in zip(gnode.outputs, outs):
                    tensor_map[id(old)] = inner_map[id(t)]
                continue
            if hasattr(op, "name"):
                op = copy_of(op)
            if isinstance(op, keras.layers.Layer):
                if training is not None and _keras.accepts_training(op):
                    kwargs["training"] = training
            out = op(*args, **kwargs)
            for old, new in zip(gnode.outputs, tree.flatten(out)):
                tensor_map[id(old)] = new

    fn = functional_of(model)
    tensor_map = {}
    for x in fn.inputs:
        tensor_map[id(x)] = keras.Input(batch_shape=x.shape, dtype=x.dtype,
                                        name=input_layer_name(x))
    inline(model, tensor_map, None)
    new_in = tree.map_structure(lambda t: tensor_map[id(t)],
                                _keras.inputs_struct(fn))
    new_out = tree.map_structure(lambda t: tensor_map[id(t)],
                                 _keras.outputs_struct(fn))
    flat = keras.Model(new_in, new_out, name=model.name)
    if weights:
        for op, copy in clones.values():
            if getattr(op, "weights", None):  # keras.ops operations have none
                copy.set_weights(op.get_weights())
    return flat
