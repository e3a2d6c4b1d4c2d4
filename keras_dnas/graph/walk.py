"""Walking and rebuilding Keras functional graphs.

This module (with the rest of :mod:`keras_dnas.graph`) is the only place in
keras_dnas that reads Keras graph internals (``Function._nodes_by_depth``,
``Node.arguments``, ``Sequential._functional``).
"""

import keras
from keras.src import tree
from keras.src.models.functional import Functional
from keras.src.saving import serialization_lib


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
        fn = getattr(model, "_functional", None)
        if fn is None:
            raise ValueError(
                f"Sequential model '{model.name}' has no known input shape, so its graph "
                "cannot be analysed. Start it with `keras.Input(shape)` or call "
                "`model.build(input_shape)` first."
            )
        return fn
    if isinstance(model, Functional):
        return model
    if isinstance(model, keras.Model):
        raise ValueError(
            f"Model '{model.name}' ({type(model).__name__}) is a subclassed model: its graph "
            "is Python code that keras_dnas cannot read. Build it as a Functional or "
            "Sequential model, or write it with `kd.layers.Masked*` layers inside a "
            "Functional model and add `kd.DNASCallback` directly."
        )
    raise ValueError(f"Expected a keras.Model. Received: {type(model).__name__}")


def nodes(model):
    """Graph nodes in execution order (model inputs excluded)."""
    fn = functional_of(model)
    ordered = []
    for depth in sorted(fn._nodes_by_depth.keys(), reverse=True):
        for node in fn._nodes_by_depth[depth]:
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
    return tensor._keras_history.operation.name


def rebuild(model, operation_fn, name=None, model_class=None):
    """Rebuild ``model``'s graph, calling ``operation_fn(op)`` in place of each op.

    ``operation_fn`` is called once per operation (shared layers stay shared).
    Nothing of the original model is modified: new inputs are created and new
    layers are called on them.

    Returns:
        A new functional model (``model_class``, default ``keras.Model``).
    """
    fn = functional_of(model)
    tensor_map = {}
    new_inputs = []
    for x in fn.inputs:
        y = keras.Input(batch_shape=x.shape, dtype=x.dtype, name=input_layer_name(x))
        tensor_map[id(x)] = y
        new_inputs.append(y)
    replaced = {}
    for gnode in nodes(model):
        op = gnode.operation
        if id(op) not in replaced:
            replaced[id(op)] = operation_fn(op)
        args, kwargs = gnode.node.arguments.fill_in(tensor_map)
        out = replaced[id(op)](*args, **kwargs)
        for old, new in zip(gnode.outputs, tree.flatten(out)):
            tensor_map[id(old)] = new
    inputs_struct = getattr(fn, "_inputs_struct", fn.inputs)
    outputs_struct = getattr(fn, "_outputs_struct", fn.outputs)
    new_in = tree.map_structure(lambda t: tensor_map[id(t)], inputs_struct)
    new_out = tree.map_structure(lambda t: tensor_map[id(t)], outputs_struct)
    cls = model_class or keras.Model
    return cls(new_in, new_out, name=name or model.name), replaced


def clone_layer(layer, cls=None, config_update=None):
    """A fresh, unbuilt copy of ``layer`` (optionally as ``cls`` with a changed config).

    Raises:
        ValueError: naming the layer, if its config cannot rebuild it.
    """
    cls = cls or type(layer)
    config = layer.get_config()
    if config_update:
        config.update(config_update)
    try:
        # The user's own layers (Lambda with Python code included) are rebuilt
        # from their own config in this process: unsafe deserialisation is fine.
        with serialization_lib.SafeModeScope(False):
            if isinstance(layer, keras.Model):
                return keras.models.clone_model(layer)
            return cls.from_config(config)
    except Exception as e:  # noqa: BLE001 - re-raised with the layer's name
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) cannot be rebuilt from its "
            f"get_config(): {e}. Give the layer a complete get_config()."
        ) from e
