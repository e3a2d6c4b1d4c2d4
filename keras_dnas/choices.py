"""Choice blocks in ``kd.prepare(model, alternatives=...)`` and in ``kd.freeze``.

``add_choices`` rewrites a flat functional model so that chosen layers (or, for the built-in
``"paper_b"`` pool, conv blocks) become :class:`keras_dnas.layers.Choice` blocks;
:func:`keras_dnas.prepare.collapse` keeps only the argmax alternative of every block of a
searchable model (what ``kd.freeze`` certifies and slices).

Built-in pools (``alternatives="paper_b"``, Burrello et al., TETC 2023, path-based
supernet): every *conv block* -- a ``Conv2D`` / ``Conv1D`` (``groups=1``) whose only consumer
is a ``BatchNormalization``, with the activation layer that follows it when that is the BN's
only consumer -- becomes a Choice over

0. the block itself (weights kept: the prepared model computes what the seed does),
1. the same block with a 5x5 (1-D: 5-tap) kernel (when the kernel is not already 5 and the
   output shape is unchanged),
2. a depthwise-separable block: depthwise kxk (same strides, padding, dilation), BN,
   activation, then a 1x1 conv to the block's filters, BN, activation (kernels larger than 1),
3. identity, when the block maps its input to a tensor of the same shape and its input feeds
   nothing else (so not the first conv of a residual block: paper B's ResNet-8 keeps identity
   out of the first conv of each stack).

The new alternatives start from the seed's block, so the search does not begin from untrained
paths beside a trained one: the 5x5 kernel is the kxk kernel zero-padded around it (on the
newest taps for causal padding), with the block's BN and activation weights, so it computes
what the block does; the separable block's depthwise and pointwise kernels are, per input
channel, the best rank-1 factorisation (SVD) of the kxk kernel's slice for that channel, with
its middle BN shifted so that the ReLU between them passes almost everything, and the block's
BN weights after the pointwise conv (an approximation: the middle BN normalises each channel).
The Choice's ``reference`` is the block itself: during ``DNASCallback``'s warm-up the other
alternatives learn to reproduce its output (:class:`keras_dnas.layers.Choice`).

A conv with no BatchNormalization after it (e.g. ResNet's 1x1 projection shortcuts, a
classifier) is left as it is.
"""

import keras
import numpy as np

from keras_dnas import _keras
from keras_dnas.graph import walk
from keras_dnas.layers.choice import Choice, is_choice
from keras_dnas.layers.masked import plain_class

L = keras.layers

_ACTIVATIONS = (L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.PReLU)
BUILTIN = ("paper_b",)


# ----------------------------------------------------------------------------------- prepare


def _consumers(model):
    found = {}
    for gnode in walk.nodes(model):
        for t in gnode.inputs:
            found.setdefault(id(t), []).append(gnode)
    for t in walk.model_outputs(model):
        found.setdefault(id(t), []).append(None)  # a model output counts as a consumer
    return found


def _single(consumers, tensor, kind):
    users = consumers.get(id(tensor), [])
    if len(users) != 1 or users[0] is None:
        return None
    node = users[0]
    op = node.operation
    if isinstance(op, kind) and len(node.inputs) == 1 and len(node.outputs) == 1:
        return node
    return None


def _conv_blocks(model):
    """``[(chain of graph nodes, identity allowed)]`` of the eligible conv blocks."""
    consumers = _consumers(model)
    nodes = walk.nodes(model)
    calls = {}
    for gnode in nodes:
        calls[id(gnode.operation)] = calls.get(id(gnode.operation), 0) + 1
    blocks, used = [], set()
    for gnode in nodes:
        op = gnode.operation
        if id(op) in used or plain_class(op) not in (L.Conv2D, L.Conv1D) or \
                getattr(op, "groups", 1) != 1 or len(gnode.inputs) != 1 or calls[id(op)] != 1:
            continue
        bn = _single(consumers, gnode.outputs[0], L.BatchNormalization)
        if bn is None:
            continue
        chain = [gnode, bn]
        act = _single(consumers, bn.outputs[0], _ACTIVATIONS)
        if act is not None:
            chain.append(act)
        x, y = gnode.inputs[0], chain[-1].outputs[0]
        alone = len(consumers.get(id(x), [])) == 1
        identity = alone and tuple(x.shape) == tuple(y.shape)
        used.update(id(n.operation) for n in chain)
        blocks.append((chain, identity))
    return blocks


def _clone(layer, suffix=None, **update):
    config = {"name": layer.name + suffix} if suffix else {}
    config.update(update)
    return walk.clone_layer(layer, plain_class(layer), config)


def _paper_b_pool(chain, identity):
    """The alternatives of one conv block (see the module docstring) as layer lists."""
    conv = chain[0].operation
    rest = [n.operation for n in chain[1:]]
    k = list(conv.kernel_size)
    one_d = len(k) == 1
    pool = [[_clone(op, "") for op in [conv] + rest]]  # the block itself
    if any(d != 5 for d in k):
        pool.append([_clone(conv, "_k5", kernel_size=(5,) * len(k))]
                    + [_clone(op, "_k5") for op in rest])
    if any(d > 1 for d in k):
        dw_cls = L.DepthwiseConv1D if one_d else L.DepthwiseConv2D
        causal = conv.padding == "causal"  # Keras' depthwise convs have no causal padding
        dw = dw_cls(conv.kernel_size, strides=conv.strides,
                    padding="valid" if causal else conv.padding,
                    dilation_rate=conv.dilation_rate, use_bias=False, name=conv.name + "_dw")
        pw = _clone(conv, "_pw", kernel_size=(1,) * len(k), strides=(1,) * len(k),
                    dilation_rate=(1,) * len(k), padding="valid")
        pad = [L.ZeroPadding1D(((k[0] - 1) * conv.dilation_rate[0], 0),
                               name=conv.name + "_dw_pad")] if causal else []
        pool.append(pad + [dw] + [_clone(op, "_dw") for op in rest] + [pw]
                    + [_clone(op, "_pw") for op in rest])
    if identity:
        pool.append("identity")
    return pool


#: Middle-BN shift (in standard deviations) of an initialised separable block: the ReLU after
#: it passes all but ~2 % of a normal distribution, so the block stays nearly linear.
SEPARABLE_SHIFT = 2.0


def _padded_kernel(kernel, size, causal):
    """``kernel`` (k..., cin, cout) zero-padded to ``size`` taps per spatial axis: centred
    (odd sizes, the same output alignment under "same" padding), or on the newest taps."""
    k = kernel.shape[:-2]
    if not causal and any((size - d) % 2 for d in k):
        return None
    pads = [((size - d), 0) if causal else ((size - d) // 2, (size - d) // 2) for d in k]
    return np.pad(kernel, pads + [(0, 0), (0, 0)])


def _separable_factors(kernel):
    """Depthwise (k..., cin, 1) and pointwise (1..., cin, cout) kernels whose composition is
    each input channel's best rank-1 approximation of ``kernel`` (k..., cin, cout)."""
    k, (cin, cout) = kernel.shape[:-2], kernel.shape[-2:]
    taps = int(np.prod(k))
    dw = np.zeros((taps, cin), kernel.dtype)
    pw = np.zeros((cin, cout), kernel.dtype)
    for c in range(cin):
        u, s, vt = np.linalg.svd(kernel.reshape(taps, cin, cout)[:, c, :], full_matrices=False)
        sign = 1.0 if u[:, 0].sum() >= 0 else -1.0  # inputs after a ReLU are mostly > 0
        dw[:, c] = sign * u[:, 0] * np.sqrt(s[0])
        pw[c] = sign * vt[0] * np.sqrt(s[0])
    return dw.reshape(*k, cin, 1), pw.reshape(*(1,) * len(k), cin, cout)


def _initialise_from_seed(pool, chain_ops):
    """Set the weights of the new alternatives of one block from the block's (see the
    module docstring). ``pool``: :func:`_paper_b_pool`'s layer lists, ``pool[0]`` the block."""
    conv, rest = chain_ops[0], chain_ops[1:]
    kernel = np.asarray(keras.ops.convert_to_numpy(conv.kernel))
    bias = [np.asarray(keras.ops.convert_to_numpy(conv.bias))] if conv.use_bias else []
    causal = conv.padding == "causal"
    for layers in pool[1:]:
        if layers == "identity":
            continue
        names = [layer.name for layer in layers]
        if names[0] == conv.name + "_k5":
            padded = _padded_kernel(kernel, layers[0].kernel_size[0], causal)
            if padded is None:
                continue
            layers[0].set_weights([padded] + bias)
            for new, old in zip(layers[1:], rest):
                new.set_weights(old.get_weights())
        elif conv.name + "_dw" in names:
            at = names.index(conv.name + "_dw")
            dw, pw = _separable_factors(kernel)
            layers[at].set_weights([dw])
            middle = layers[at + 1:at + len(rest) + 1]
            after = layers[at + len(rest) + 2:]
            pw_conv = layers[at + len(rest) + 1]
            pw_conv.set_weights([pw] + [np.zeros_like(b) for b in bias])
            bn = middle[0]
            values = {v.path.split("/")[-1]: v for v in bn.weights}
            if "beta" in values and "gamma" in values:
                values["gamma"].assign(np.ones(values["gamma"].shape, "float32"))
                values["beta"].assign(np.full(values["beta"].shape, SEPARABLE_SHIFT, "float32"))
            for new, old in zip(middle[1:], rest[1:]):
                new.set_weights(old.get_weights())
            for new, old in zip(after, rest):
                new.set_weights(old.get_weights())


def _block_of(layers, x_shape, name):
    """A Sequential block of ``layers`` on inputs of ``x_shape`` (or the identity)."""
    if layers == "identity":
        return "identity"
    return keras.Sequential([keras.Input(batch_shape=x_shape)] + layers, name=name)


def add_choices(model, alternatives, mode="gumbel"):
    """``model`` (flat, functional) with Choice blocks where ``alternatives`` says.

    Args:
        model: a flat functional model (not modified; its layers are copied with weights).
        alternatives: ``"paper_b"`` or ``fn(layer) -> list | None`` (the alternatives of that
            layer: Keras layers, Sequential / Functional blocks or ``"identity"``; the layer
            itself may be one of them and keeps its weights).
        mode: the Choice blocks' training mode (``kd.layers.Choice(mode=...)``).

    Returns:
        ``(new model, number of blocks)``.
    """
    replace = {}  # id(first node) -> (chain ids, alternatives, block name, kept, reference)
    inits = []  # paper_b: (pool, the seed block's layers) whose new alternatives are initialised
    if isinstance(alternatives, str):
        if alternatives not in BUILTIN:
            raise ValueError(f"kd.prepare: unknown built-in alternatives {alternatives!r}. "
                             f"Built-in: {list(BUILTIN)}, or pass fn(layer) -> list | None.")
        for chain, identity in _conv_blocks(model):
            pool = _paper_b_pool(chain, identity)
            x = chain[0].inputs[0]
            y_shape = tuple(chain[-1].outputs[0].shape)
            blocks = []
            for i, layers in enumerate(pool):
                block = _block_of(layers, tuple(x.shape), f"{chain[0].operation.name}_alt{i}")
                if block == "identity" or tuple(block.outputs[0].shape) == y_shape:
                    blocks.append(block)
            if len(blocks) > 1:
                replace[id(chain[0].node)] = ([id(n.node) for n in chain], blocks,
                                         f"{chain[0].operation.name}_choice", pool[0], 0)
                inits.append((pool, [n.operation for n in chain]))
    elif callable(alternatives):
        calls = {}
        for gnode in walk.nodes(model):
            calls[id(gnode.operation)] = calls.get(id(gnode.operation), 0) + 1
        for gnode in walk.nodes(model):
            op = gnode.operation
            if not isinstance(op, L.Layer) or isinstance(op, keras.Model):
                continue
            alts = alternatives(op)
            if alts is None:
                continue
            if len(gnode.inputs) != 1 or len(gnode.outputs) != 1 or calls[id(op)] != 1:
                raise ValueError(
                    f"kd.prepare(alternatives=...): layer '{op.name}' has several inputs, "
                    "outputs or calls; a Choice block replaces a layer called once on one "
                    "tensor. Return None for it.")
            alts, kept, reference = list(alts), None, None
            for i, a in enumerate(alts):
                if a is op:  # the layer itself: a copy with its weights
                    alts[i] = kept = _clone(op)
                    reference = i
            replace[id(gnode.node)] = ([id(gnode.node)], alts, f"{op.name}_choice",
                                  [kept] if kept is not None else None, reference)
    else:
        raise ValueError("kd.prepare: alternatives= takes 'paper_b' or a callable "
                         f"fn(layer) -> list | None. Received: {alternatives!r}")
    if not replace:
        return model, 0

    fn = walk.functional_of(model)
    tensor_map, clones, skip = {}, {}, set()
    for x in fn.inputs:
        tensor_map[id(x)] = keras.Input(batch_shape=x.shape, dtype=x.dtype,
                                        name=walk.input_layer_name(x))
    originals = {}  # clone -> original, to copy weights
    nodes = walk.nodes(model)
    by_id = {id(n.node): n for n in nodes}  # Keras nodes persist, GraphNode wrappers do not
    for gnode in nodes:
        if id(gnode.node) in skip:
            continue
        if id(gnode.node) in replace:
            ids, alts, name, kept, reference = replace[id(gnode.node)]
            skip.update(ids)
            x = tensor_map[id(gnode.inputs[0])]
            out = Choice(alts, mode=mode, reference=reference, name=name)(x)
            # the block itself keeps the seed's weights
            if kept:
                for new, old_id in zip(kept, ids):
                    originals[id(new)] = (new, by_id[old_id].operation)
            tensor_map[id(by_id[ids[-1]].outputs[0])] = out
            continue
        op = gnode.operation
        args, kwargs = _keras.call_arguments(gnode.node, tensor_map)
        if isinstance(op, L.Layer):
            if id(op) not in clones:
                clones[id(op)] = walk.clone_layer(op)
                originals[id(clones[id(op)])] = (clones[id(op)], op)
            new_op = clones[id(op)]
        else:
            new_op = op
        out = new_op(*args, **kwargs)
        for old, new in zip(gnode.outputs, keras.tree.flatten(out)):
            tensor_map[id(old)] = new
    new_in = keras.tree.map_structure(lambda t: tensor_map[id(t)],
                                      _keras.inputs_struct(fn))
    new_out = keras.tree.map_structure(lambda t: tensor_map[id(t)],
                                       _keras.outputs_struct(fn))
    result = keras.Model(new_in, new_out, name=model.name)
    for new, old in originals.values():
        if getattr(old, "weights", None):
            new.set_weights(old.get_weights())
    for pool, chain_ops in inits:
        _initialise_from_seed(pool, chain_ops)
    return result, len(replace)


# ------------------------------------------------------------------------------------ freeze


def chosen(model):
    """``{block name: index of its argmax alternative}`` of a model with Choice blocks."""
    return {layer.name: layer.chosen() for layer in walk.functional_of(model).layers
            if is_choice(layer)}
