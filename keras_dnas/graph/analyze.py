"""Graph analysis: union-find over tensors -> ChannelPlan; binding masks to groups."""

from keras_dnas import _keras
from keras_dnas.graph import roles, walk
from keras_dnas.graph.plan import ChannelPlan, Group, LayerInfo, View
from keras_dnas.layers.masked import _Link, is_masked


class _UnionFind:
    def __init__(self):
        self.parent = []
        self.size = []

    def new(self, size):
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        return len(self.parent) - 1

    def find(self, g):
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a != b:
            if self.size[a] != self.size[b]:  # callers check sizes first
                raise RuntimeError(f"internal: joining groups of {self.size[a]} and {self.size[b]}")
            self.parent[max(a, b)] = min(a, b)


def _same_layout(uf, views):
    first = views[0]
    return all(
        v[1] == first[1] and [uf.size[g] for g in v[0]] == [uf.size[g] for g in first[0]]
        for v in views
    )


def analyze(model, exclude=None, masked_only=False):
    """Find the channel groups of a Functional or Sequential Keras model.

    Walks the graph once: Conv/Dense/SeparableConv start groups, BN/
    activations/pooling/padding/dropout/depthwise/per-channel layers and
    element-wise ``keras.ops`` of one tensor propagate them, Add-like layers
    and element-wise ops of two tensors join them (a one-channel operand
    broadcast over the channels joins nothing), channel Concatenate
    concatenates them and Flatten tiles them. Groups that reach a model
    output, a model input or an opaque layer are frozen.

    Args:
        model: a Functional or Sequential ``keras.Model`` (not modified).
        exclude: names of layers to leave untouched: the channels of every
            tensor they read or write are frozen.
        masked_only: treat plain Conv/Dense layers like excluded ones (used
            on searchable models, where only ``kd.layers.Masked*`` search).

    Nested sub-models are analysed inlined (:func:`walk.flatten`; layer
    names are the flattened ones) unless they are named in ``exclude``;
    with ``masked_only`` they stay opaque (a searchable model from
    ``kd.prepare`` is already flat).

    Returns:
        A :class:`ChannelPlan`.

    Raises:
        ValueError: for a subclassed model, an unbuilt Sequential, or an
            ``exclude`` name that is not a layer of the model.

    Example:

    >>> import keras, keras_dnas as kd
    >>> x = keras.Input((16, 16, 3))
    >>> a = keras.layers.Conv2D(8, 3, padding="same", name="conv_a")(x)
    >>> b = keras.layers.Conv2D(8, 3, padding="same", name="conv_b")(a)
    >>> y = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, b])))
    >>> plan = kd.graph.analyze(keras.Model(x, y))
    >>> plan.searchable_groups()[0].defined_by   # the residual add ties both convs
    ['conv_a', 'conv_b']
    """
    exclude = set(exclude or ())
    if not masked_only:
        model = walk.flatten(model, keep=exclude, weights=False)
    graph_nodes = walk.nodes(model)
    known = {n.operation.name for n in graph_nodes if hasattr(n.operation, "name")}
    unknown = sorted(exclude - known)
    if unknown:
        raise ValueError(
            f"exclude= names layers that are not in model '{model.name}': {unknown}. "
            f"Known layers: {sorted(known)}"
        )

    uf = _UnionFind()
    view_of = {}
    frozen = []  # (gid, reason)
    defined = {}  # gid -> [layer names]
    inputs = []
    for x in walk.model_inputs(model):
        g = uf.new(x.shape[-1] or 0)
        frozen.append((g, f"model input '{walk.input_layer_name(x)}'"))
        view_of[id(x)] = ([g], 1)
        inputs.append(([g], 1))

    layer_out = {}  # id(layer) -> gid, so that shared layers keep one group
    layer_in = {}
    records = []
    describe = _describer(model, graph_nodes)
    for node in graph_nodes:
        layer = node.operation
        name, what = describe(node)
        in_shapes = [tuple(t.shape) for t in node.inputs]
        out_shape = tuple(node.outputs[0].shape) if node.outputs else ()
        role, op, reason = roles.role_of(layer, in_shapes, out_shape,
                                         getattr(node.node, "arguments", None))
        in_views = [view_of[id(t)] for t in node.inputs]
        if name in exclude:
            role, reason = "opaque", "excluded by the user (exclude=)"
        elif role == "defining" and masked_only and not is_masked(layer):
            # kd.prepare leaves a layer plain for a reason its warning named; say where to look
            role, reason = "opaque", ("plain layer in a searchable model (kd.prepare left it "
                                      "unmasked: excluded, or its channels reach a layer without "
                                      "a channel rule, as kd.prepare's warning says)")
        if role != "opaque" and (len(node.outputs) != 1 or not in_views):
            role, reason = "opaque", "multiple outputs"
        # a one-channel operand broadcast over every channel (spatial attention) joins nothing
        joined = [v for v, shape in zip(in_views, in_shapes)
                  if role != "joining" or not (shape[-1] == 1 and out_shape[-1] != 1)]
        if role in ("joining", "propagating") and (not joined or not _same_layout(uf, joined)):
            role, reason = "opaque", "inputs have different channel layouts"
        if role == "concatenating" and any(v[1] != 1 for v in in_views):
            role, reason = "opaque", "concatenates flattened tensors"

        if role == "defining":
            if id(layer) in layer_out:
                g = layer_out[id(layer)]
                prev = layer_in[id(layer)]
                if not _same_layout(uf, [prev, in_views[0]]):
                    role, reason = "opaque", "shared layer called on different channel layouts"
                else:
                    for a, b in zip(prev[0], in_views[0][0]):
                        uf.union(a, b)
            else:
                g = uf.new(out_shape[-1])
                layer_out[id(layer)] = g
                layer_in[id(layer)] = in_views[0]
                defined.setdefault(g, []).append(name)
            out_views = [([g], 1)]
        mixing = roles.mixes_channels(layer, len(out_shape))
        if role in ("defining", "propagating") and mixing:
            for g in out_views[0][0] if role == "defining" else in_views[0][0]:
                frozen.append((g, f"{what} applies '{mixing}' across channels"))
        if role == "propagating":
            out_views = [in_views[0]]
        elif role == "joining":
            for v in joined[1:]:
                for a, b in zip(joined[0][0], v[0]):
                    uf.union(a, b)
            out_views = [joined[0]]
        elif role == "concatenating":
            out_views = [([g for v in in_views for g in v[0]], 1)]
        elif role == "flattening":
            positions = 1
            for d in in_shapes[0][1:-1]:
                positions *= d
            out_views = [(in_views[0][0], in_views[0][1] * positions)]
        elif role == "opaque":
            for v in in_views:
                for g in v[0]:
                    frozen.append((g, f"touches {what}: {reason}"))
            out_views = []
            for t in node.outputs:
                g = uf.new(t.shape[-1] if t.shape and t.shape[-1] else 0)
                frozen.append((g, f"output of {what}: {reason}"))
                out_views.append(([g], 1))
        for t, v in zip(node.outputs, out_views):
            view_of[id(t)] = v
        geo = roles.geometry(layer, op, in_shapes, out_shape)
        cls = type(layer).__name__
        if roles.is_keras_op(layer):
            cls = f"keras.ops.{cls}"
        records.append((name, cls, role, op, in_views, out_views[0], geo, reason,
                        _searched_taps(layer, role)))

    outputs = []
    for t in walk.model_outputs(model):
        v = view_of[id(t)]
        outputs.append(v)
        for g in v[0]:
            frozen.append((g, f"reaches the model output '{_keras.producer(t).name}'"))

    # Resolve union-find roots and renumber groups in order of appearance.
    number = {}

    def gid(g):
        r = uf.find(g)
        if r not in number:
            number[r] = len(number)
        return number[r]

    def view(v):
        return View([gid(g) for g in v[0]], int(v[1]))

    plan_inputs = [view(v) for v in inputs]
    plan_layers = [
        LayerInfo(name, cls, role, op, [view(v) for v in ins], view(out), geo, reason, taps)
        for name, cls, role, op, ins, out, geo, reason, taps in records
    ]
    plan_outputs = [view(v) for v in outputs]
    groups = [None] * len(number)
    for root, n in number.items():
        groups[n] = Group(id=n, size=uf.size[root])
    for g, names in defined.items():
        groups[gid(g)].defined_by.extend(names)
    # Reaching a model output explains a frozen group best; otherwise the first reason.
    frozen.sort(key=lambda item: "model output" not in item[1])
    for g, reason in frozen:
        grp = groups[gid(g)]
        if not grp.frozen:
            grp.frozen, grp.reason = True, reason
    for grp in groups:
        grp.leader = grp.defined_by[0] if grp.defined_by else None
        if not grp.frozen and grp.leader is None:  # defensive: nothing owns a mask
            grp.frozen, grp.reason = True, "no Conv/Dense layer defines it"
    choices = _choice_blocks(graph_nodes, describe)
    return ChannelPlan(model.name, groups, plan_layers, plan_inputs, plan_outputs, choices)


def _choice_blocks(graph_nodes, describe):
    """The layers of each alternative of every ``kd.layers.Choice`` merge, in graph order.

    Calling a Choice calls every alternative on the block's input and the merge on their
    outputs, so the layers of alternative ``i`` are the ancestors of the merge's input ``i``
    that are not ancestors of every input (those are upstream of the block's input).
    """
    from keras_dnas.layers.choice import is_choice

    producer = {}
    for n in graph_nodes:
        for t in n.outputs:
            producer[id(t)] = n
    order = {id(n): k for k, n in enumerate(graph_nodes)}
    blocks = []
    for node in graph_nodes:
        if not is_choice(node.operation):
            continue
        ancestors = []
        for t in node.inputs:
            seen, todo = {}, [t]
            while todo:
                p = producer.get(id(todo.pop()))
                if p is None or id(p) in seen:
                    continue
                seen[id(p)] = p
                todo.extend(p.inputs)
            ancestors.append(seen)
        common = set.intersection(*(set(a) for a in ancestors))
        alternatives = []
        for a in ancestors:
            inside = sorted((n for k, n in a.items() if k not in common),
                            key=lambda n: order[id(n)])
            alternatives.append(list(dict.fromkeys(describe(n)[0] for n in inside)))
        blocks.append({"name": describe(node)[0], "alternatives": alternatives})
    return blocks


def _searched_taps(layer, role):
    """The plan's ``taps`` entry of a layer whose kernel taps are searched, else ``None``."""
    axes = tuple(getattr(layer, "dnas_time", ()) or ())
    if not axes or role == "opaque" or not is_masked(layer):
        return None
    return {"kernel_size": int(layer.kernel_size[0]),
            "dilation_rate": int(layer.dilation_rate[0]), "axes": list(axes)}


def _describer(model, graph_nodes):
    """``describe(node) -> (plan name, phrase)`` naming a node for plans and reasons.

    A layer is ``layer 'conv'``. A ``keras.ops`` operation (``x + 3.0``) has
    an auto-generated name such as ``add`` that the user never wrote and that
    may equal a layer's name, so its phrase also names the layers around it
    (``keras.ops 'Add' ('add') after layer 'conv' feeding layer 're_lu'``),
    and its plan name gets a ``" (op)"`` suffix when it equals a layer's.
    """
    layer_names = {getattr(n.operation, "name", None) for n in graph_nodes
                   if not roles.is_keras_op(n.operation)}
    producer, consumers = {}, {}
    for n in graph_nodes:
        for t in n.outputs:
            producer[id(t)] = n
        for t in n.inputs:
            consumers.setdefault(id(t), []).append(n)

    def nearest(start, step):
        seen, todo = set(), list(start)
        while todo:
            n = todo.pop(0)
            if id(n) in seen:
                continue
            seen.add(id(n))
            if not roles.is_keras_op(n.operation):
                return n.operation.name
            todo.extend(step(n))
        return None

    def upstream(n):
        return [producer[id(t)] for t in n.inputs if id(t) in producer]

    def downstream(n):
        return [c for t in n.outputs for c in consumers.get(id(t), [])]

    def describe(node):
        op = node.operation
        name = getattr(op, "name", type(op).__name__)
        if not roles.is_keras_op(op):
            return name, f"layer '{name}'"
        before, after = nearest(upstream(node), upstream), nearest(downstream(node), downstream)
        what = f"keras.ops '{type(op).__name__}' ('{name}')"
        what += f" after layer '{before}'" if before else " on the model input"
        what += f" feeding layer '{after}'" if after else " feeding the model output"
        return (f"{name} (op)" if name in layer_names else name), what

    return describe


def bind(model, plan=None):
    """Tie the masked layers of ``model`` to their channel groups.

    Every ``kd.layers.Masked*`` layer learns which mask variable gates its
    output and its input: the variable of the group's leader (the first
    Conv/Dense defining the group); frozen groups get no gate. Other defining
    layers of a group keep their own ``dnas_alpha`` but it becomes
    non-trainable. Idempotent; derived from the graph only, so a reloaded
    model binds exactly as before.

    Args:
        model: a Functional/Sequential model containing masked layers.
        plan: its plan from ``analyze(model, masked_only=True)`` (computed if
            omitted).

    Returns:
        The plan used.
    """
    plan = plan or analyze(model, masked_only=True)
    by_name = {layer.name: layer for layer in walk.functional_of(model).layers}

    def owner(g):
        grp = plan.groups[g]
        return None if grp.frozen else by_name[grp.leader]

    def segments(view):
        return [(owner(g), plan.groups[g].size) for g in view.segments]

    seen = set()
    for info in plan.layers:
        layer = by_name.get(info.name)
        if layer is None or not is_masked(layer) or info.name in seen:
            continue
        seen.add(info.name)
        if info.role == "opaque":
            layer._dnas_set_link(_Link())
        elif layer._dnas_role == "defining":
            layer._dnas_set_link(_Link(segments(info.output), 1, segments(info.inputs[0]),
                                       info.inputs[0].repeat))
        else:
            layer._dnas_set_link(_Link(segments(info.output), info.output.repeat))
        if layer._dnas_role == "defining" and hasattr(layer, "dnas_alpha"):
            g = plan.groups[info.output.segments[0]]
            layer.dnas_alpha.trainable = (not g.frozen) and g.leader == info.name
    for kind in ("train", "test", "predict"):
        if getattr(model, f"{kind}_function", None) is not None:
            getattr(model, f"make_{kind}_function")(force=True)
    return plan
