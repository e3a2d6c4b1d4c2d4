"""Channel gates: trainable masks, straight-through binarisation, views.

A searchable channel group owns one real parameter ``alpha_c`` per channel
(initialised to 1.0). The gate is ``theta_c = |alpha_c|`` binarised at 0.5; the
backward pass is straight-through (identity), so

    b = theta + stop_gradient(step(theta) - theta)

is exactly 0/1 in the forward pass and has the gradient of ``theta``. The
channel with the largest ``theta`` is always kept, so no layer can vanish.

Mask variables are ordinary Keras weights named ``dnas_alpha`` (see
:data:`ALPHA_NAME`); :func:`mask_variables` finds them in a model, and
:func:`exclude_from_weight_decay` keeps an optimizer's weight decay off them.
"""

import contextlib
import threading

import numpy as np
from keras import ops

from keras_dnas import _keras
from keras_dnas._ste import scale_gradient

ALPHA_NAME = "dnas_alpha"
"""Name of every channel-mask variable (``layer_name/dnas_alpha``)."""

TIME_NAMES = ("dnas_beta", "dnas_gamma")
"""Names of the time-axis masks of Conv1D / DepthwiseConv1D (:mod:`keras_dnas.layers.taps`)."""

MASK_NAMES = (ALPHA_NAME,) + TIME_NAMES
"""Every search-mask variable name (channels and taps)."""

CHOICE_NAME = "dnas_choice"
"""Name of every choice-block logit vector (``block_name/dnas_choice``)."""

SEARCH_VARIABLE_NAMES = MASK_NAMES + (CHOICE_NAME,)
"""Variables the search trains: no weight decay (and frozen during warm-up)."""

THRESHOLD = 0.5
"""A channel is kept while ``|alpha| > THRESHOLD``."""


def gate(alpha, keep_alive=True, grad_scale=None, centred=False):
    """Binary channel gate with a straight-through gradient.

    Args:
        alpha: 1-D tensor or variable of real mask parameters.
        keep_alive: force the channel with the largest ``|alpha|`` on, so
            at least one channel always survives.
        grad_scale: optional scalar (a variable, so it can change without
            retracing) multiplying the gradient that reaches ``alpha``; 0
            freezes the masks during warm-up, the forward value is unchanged.
        centred: remove from the gradient of the open channels its mean over
            them (the component along the hard gate vector); closed channels
            keep theirs. Scaling every open channel of a group by a common
            factor is undone exactly by the next layer's weights in a ReLU
            network (and by BatchNormalization), so that component of the
            gradient says nothing about which channels to keep. It is not
            zero for the group that feeds the classifier, where a common
            scale is the logits' temperature: cross-entropy on well-fitted
            data always wants it larger, which keeps that group's gates
            growing against any budget penalty. Used on the model's forward
            path, not on the cost path (budget penalties act on counts).

    Returns:
        A tensor of the same shape holding exactly 0.0 or 1.0, whose
        gradient with respect to ``alpha`` is ``sign(alpha)`` (centred:
        projected as above).

    Example:

    >>> import numpy as np
    >>> from keras_dnas import masks
    >>> np.asarray(masks.gate(np.array([0.9, -0.7, 0.2], "float32"))).tolist()
    [1.0, 1.0, 0.0]
    """
    alpha = ops.convert_to_tensor(alpha)
    if grad_scale is not None:
        alpha = scale_gradient(alpha, grad_scale)
    theta = ops.abs(alpha)
    hard = ops.cast(ops.greater(theta, THRESHOLD), theta.dtype)
    if keep_alive:
        best = ops.one_hot(ops.argmax(theta), ops.shape(theta)[0], dtype=theta.dtype)
        hard = ops.maximum(hard, best)
    hard = ops.stop_gradient(hard)
    residual = theta - ops.stop_gradient(theta)  # forward value 0, gradient identity
    if centred:
        mean = ops.sum(hard * residual) / ops.maximum(ops.sum(hard), 1.0)
        residual = residual - hard * mean
    return hard + residual


class SearchHooks:
    """What a running search changes in the gate of one group (set by the callback).

    Attributes:
        grad_scale: scalar variable multiplying the gradient that reaches the
            mask (0 during warm-up), see :func:`gate`.
        anchor: non-trainable copy of the mask taken at the start of each
            epoch, or ``None``.
        lr_scale: the gate reads ``anchor + lr_scale * (alpha - anchor)``:
            the mask moves ``lr_scale`` times as far as the optimizer moves
            ``alpha``, so its learning rate is scaled without touching the
            optimizer (exactly for scale-invariant optimizers such as Adam,
            whose step does not depend on the gradient's scale; plain SGD
            sees ``lr_scale ** 2``). :meth:`fold` writes the moved value back
            into ``alpha`` between epochs, so ``alpha`` holds the mask then.
        centred: centre the task gradient on the forward path (see :func:`gate`).

    The variables belong to the model while a search runs (the compiled train
    step reads them as state on every backend), and the hooks object itself is
    not tracked by Keras.
    """

    __slots__ = ("grad_scale", "anchor", "lr_scale", "centred")

    def __init__(self, grad_scale=None, anchor=None, lr_scale=1.0, centred=False):
        self.grad_scale = grad_scale
        self.anchor = anchor
        self.lr_scale = float(lr_scale)
        self.centred = bool(centred)

    def effective(self, alpha):
        """The mask the gate reads (``alpha`` itself unless the learning rate is scaled)."""
        if self.anchor is None or self.lr_scale == 1.0:
            return alpha
        anchor = ops.convert_to_tensor(self.anchor)
        return anchor + self.lr_scale * (ops.convert_to_tensor(alpha) - anchor)

    def fold(self, alpha):
        """Write the moved mask into ``alpha`` and restart the anchor there (between steps)."""
        if self.anchor is None:
            return
        if self.lr_scale != 1.0:
            alpha.assign(self.effective(alpha))
        self.restart(alpha)

    def restart(self, alpha):
        """Anchor at ``alpha``'s current value (the gate then reads ``alpha`` itself)."""
        if self.anchor is not None:
            # a copy: JAX would otherwise hold one buffer in two variables of the step's state
            self.anchor.assign(np.array(ops.convert_to_numpy(alpha)))


SEARCH_STATE_ATTR = "dnas_search_state"
"""Attribute of a model holding ``DNASCallback``'s state layer while ``fit`` runs (its
variables are the model's then, so the compiled step reads them as state on every backend)."""

SEARCH_PROGRESS_ATTR = "dnas_search_progress"
"""Attribute of a model holding ``DNASCallback``'s progress layer while ``fit`` runs (the
strengths' bases and boosts, saved with the weights so a resumed search continues)."""

def user_variables(model):
    """``model.weights`` without the search's layers ``DNASCallback`` attaches to ``model``
    for the length of ``fit`` (:data:`SEARCH_STATE_ATTR`, :data:`SEARCH_PROGRESS_ATTR`): the
    weights a user or a callback takes during ``fit`` (``EarlyStopping(restore_best_weights=
    True)``) must fit the model after it."""
    attached = [_keras.sublayer(model, a) for a in (SEARCH_STATE_ATTR, SEARCH_PROGRESS_ATTR)]
    skip = {id(v) for layer in attached if layer is not None for v in layer.weights}
    return [v for v in model.weights if id(v) not in skip] if skip else model.weights


def get_user_weights(model):
    """``model.get_weights()`` of :func:`user_variables`."""
    return [np.array(ops.convert_to_numpy(v)) for v in user_variables(model)]


def set_user_weights(model, weights):
    """``model.set_weights(weights)`` of :func:`user_variables`."""
    variables = user_variables(model)
    if len(weights) != len(variables):
        raise ValueError(
            f"You called `set_weights(weights)` on model '{model.name}' with a weight list of "
            f"length {len(weights)}, but it has {len(variables)} weights (the search state "
            "DNASCallback attaches during fit is not one of them).")
    for variable, value in zip(variables, weights):
        if tuple(variable.shape) != tuple(np.shape(value)):
            raise ValueError(
                f"Weight {variable.path} has shape {tuple(variable.shape)}; received a value "
                f"of shape {tuple(np.shape(value))} from `set_weights(weights)`.")
        variable.assign(value)


HOOKS_ATTR = "_dnas_search"
"""Attribute of a mask owner holding its :class:`SearchHooks` while a search runs."""

TIME_HOOKS_ATTR = "_dnas_search_time"
"""Attribute of a layer with searched taps: ``{id(variable): SearchHooks}`` of its
``dnas_beta`` / ``dnas_gamma`` while a search runs (their anchors and learning-rate scale)."""


_one_pass = threading.local()  # per thread: each replica of a distributed step traces its own


@contextlib.contextmanager
def one_gate_per_group():
    """Within this context (one forward pass of a model) each group's gate is computed once.

    Every masked layer reading a group (its defining layer's output, the BatchNormalization
    after it, the next layer's input) otherwise builds the same gate again: on a traced
    backend that is the same dozen ops and their gradient once per reader, in every trace and
    every step. Inside one pass the readers share one tensor: the same forward values, and the
    gradient reaching the mask is the sum of the readers' gradients either way (summed once
    here instead of per copy). Nested contexts share the outermost one's gates.
    """
    if getattr(_one_pass, "gates", None) is not None:
        yield
        return
    _one_pass.gates = {}
    try:
        yield
    finally:
        _one_pass.gates = None


def owner_gate(owner, centred=False):
    """Gate of the group whose mask ``owner`` (a masked layer) holds.

    ``centred`` (the forward path) applies only while a search enables it
    (the owner's :class:`SearchHooks`, set by :class:`~keras_dnas.DNASCallback`).
    Inside :func:`one_gate_per_group` it is computed once per owner.
    """
    hooks = owner.__dict__.get(HOOKS_ATTR)
    centred = bool(centred and hooks is not None and hooks.centred)
    gates = getattr(_one_pass, "gates", None)
    key = (id(owner), centred)
    if gates is not None and key in gates:
        return gates[key][1]
    if hooks is None:
        value = gate(owner.dnas_alpha)
    else:
        value = gate(hooks.effective(owner.dnas_alpha), grad_scale=hooks.grad_scale,
                     centred=centred)
    if gates is not None:
        gates[key] = (owner, value)  # the owner kept alive: its id stays its own in the pass
    return value


def hard_gate(alpha, keep_alive=True):
    """NumPy boolean keep-mask of ``alpha`` (the forward value of :func:`gate`).

    Example:

    >>> from keras_dnas import masks
    >>> masks.hard_gate([0.1, 0.3]).tolist()   # keep-alive saves the largest
    [False, True]
    """
    theta = np.abs(np.asarray(ops.convert_to_numpy(alpha), dtype="float64")).reshape(-1)
    keep = theta > THRESHOLD
    if keep_alive and theta.size and not keep.any():
        keep[int(np.argmax(theta))] = True
    return keep


def view_mask(segments, repeat=1):
    """Gate of a tensor whose channels concatenate and tile several groups.

    Args:
        segments: list of 1-D gates (tensors) or ``None`` for an always-on
            segment given by its size as an int.
        repeat: how many times the concatenation is tiled (``Flatten`` of an
            ``H x W x C`` tensor tiles ``H * W`` times).

    Returns:
        A 1-D tensor of length ``repeat * sum(sizes)``.

    Example:

    >>> import numpy as np
    >>> from keras_dnas import masks
    >>> m = masks.view_mask([np.array([1.0, 0.0]), 1], repeat=2)
    >>> np.asarray(m).tolist()
    [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    """
    parts = [
        ops.ones((seg,), dtype="float32") if isinstance(seg, (int, np.integer))
        else ops.cast(ops.convert_to_tensor(seg), "float32")
        for seg in segments
    ]
    mask = parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=0)
    if repeat != 1:
        mask = ops.tile(mask, [int(repeat)])
    return mask


def hard_view_mask(segments, repeat=1):
    """NumPy boolean version of :func:`view_mask` (``segments`` of bool arrays or ints).

    Example:

    >>> import numpy as np
    >>> from keras_dnas import masks
    >>> masks.hard_view_mask([np.array([True, False])], repeat=2).tolist()
    [True, False, True, False]
    """
    parts = [
        np.ones(int(seg), dtype=bool) if isinstance(seg, (int, np.integer))
        else np.asarray(seg, dtype=bool)
        for seg in segments
    ]
    return np.tile(np.concatenate(parts), int(repeat))


def mask_variables(model, trainable_only=True):
    """The channel-mask variables of a model (``dnas_alpha`` weights).

    Args:
        model: a Keras model or layer.
        trainable_only: return only masks that the search updates (the
            leader of each channel group); followers tied to a leader are
            non-trainable.

    Returns:
        A list of Keras variables, without duplicates.

    Example:

    >>> import keras, keras_dnas as kd
    >>> m = keras.Sequential([keras.Input((8,)), kd.layers.MaskedDense(4, name="hidden"),
    ...                       keras.layers.Dense(2)])
    >>> [v.path.split("/")[-2:] for v in kd.masks.mask_variables(m)]
    [['hidden', 'dnas_alpha']]
    """
    seen, out = set(), []
    for v in model.weights:
        if v.name == ALPHA_NAME and id(v) not in seen:
            if trainable_only and not v.trainable:
                continue
            seen.add(id(v))
            out.append(v)
    return out


def exclude_from_weight_decay(optimizer):
    """Keep ``optimizer``'s weight decay off every search variable (:data:`SEARCH_VARIABLE_NAMES`).

    Keeps any exclusions the user configured before. ``kd.SearchableModel``
    calls it in ``compile`` and ``kd.DNASCallback`` at the start of training.
    Returns the optimizer.

    Example:

    >>> import keras, keras_dnas as kd
    >>> opt = kd.masks.exclude_from_weight_decay(keras.optimizers.AdamW())
    >>> alpha = keras.Variable([1.0], name="dnas_alpha")
    >>> kernel = keras.Variable([1.0], name="kernel")
    >>> opt._use_weight_decay(alpha), opt._use_weight_decay(kernel)
    (False, True)
    """
    from keras_dnas import _keras

    return _keras.exclude_from_weight_decay(optimizer, list(SEARCH_VARIABLE_NAMES))
