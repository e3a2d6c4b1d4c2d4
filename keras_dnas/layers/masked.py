"""Masked drop-in subclasses of Keras layers.

Each class keeps its Keras parent's constructor signature verbatim and only
adds behaviour in ``build`` (the mask variable) and ``call`` (the gates):

* **defining** layers (``MaskedConv1D``, ``MaskedConv2D``, ``MaskedDense``)
  own a ``dnas_alpha`` variable with one entry per output channel, multiply
  their output by the gate of their channel group, and multiply their input by
  the gate of the tensor they read (so a channel pruned upstream never reaches
  them, whatever BatchNormalization or a bias did to it on the way);
  ``MaskedSeparableConv1D`` and ``MaskedSeparableConv2D`` are defining too
  (their depthwise part reads the input group, the pointwise part defines);
* **following** layers (``MaskedDepthwiseConv2D``, ``MaskedDepthwiseConv1D``,
  ``MaskedBatchNormalization``) own no mask: they re-apply the gate of the group
  they sit in, so a pruned channel is exactly zero after a bias or BN shift;
  ``MaskedLayerNormalization`` also takes its statistics over the open channels.

Which gate a layer uses is decided by graph analysis (:func:`keras_dnas.graph.bind`),
which ties every layer of a channel group to one leader's variable. An unbound
defining layer uses its own mask; an unbound following layer behaves exactly
like its parent.

Performance: where it is exact, a gate is multiplied into the layer's small
per-channel parameters instead of its large activations ("folding"): the
input gate into the kernel rows, the output gate into the kernel columns and
the bias (or BN's ``gamma`` and ``beta``, or the depthwise kernel). The
parent's own ``call`` runs on the folded values through a
``keras.StatelessScope`` (the variables themselves are untouched; updates the
call makes, such as BN's moving statistics, are applied afterwards). With 0/1
gates the forward pass and the gradients of inputs and weights are bitwise the
same either way (every product the activation-side multiply would zero is a
zero term either way; the others are unchanged), and the mask gradient is the
same sum in another order (over parameters instead of batch positions, so it
can differ in the last float bits). An output gate is folded only when the
layer's activation is linear: ``relu(z * b)`` has no gradient in ``b`` for a
closed channel, ``relu(z) * b`` has, and the search needs it to reopen
channels. Inside an outer stateless scope (symbolic build, the JAX trainer) or
for LoRA / quantized / grouped layers the gates multiply the activations.
"""

import keras
from keras import ops

from keras_dnas import masks
from keras_dnas.layers.taps import TimeMaskMixin
from keras_dnas._keras import in_stateless_scope as _in_stateless_scope

_PACKAGE = "keras_dnas"


class _Link:
    """Where a masked layer reads its gates (set by graph binding; not tracked by Keras).

    A view is a list of ``(owner_or_None, size)`` segments, tiled ``repeat``
    times; ``owner`` is the layer holding that group's mask, ``None`` for a
    frozen group.

    Attributes:
        out, out_repeat: view of the layer's output.
        inputs, in_repeat: view of the layer's (first) input.
    """

    __slots__ = ("out", "out_repeat", "inputs", "in_repeat")

    def __init__(self, out=None, out_repeat=1, inputs=None, in_repeat=1):
        self.out = out or []
        self.out_repeat = out_repeat
        self.inputs = inputs or []
        self.in_repeat = in_repeat


def _view_gate(segments, repeat):
    if all(owner is None for owner, _ in segments):
        return None
    parts = [size if owner is None else masks.owner_gate(owner, centred=True)
             for owner, size in segments]
    return masks.view_mask(parts, repeat)


def _is_linear(activation):
    return activation is None or activation is keras.activations.linear


def _static_len(gate):
    shape = tuple(gate.shape)
    return shape[0] if len(shape) == 1 else None


def _folded(variable, gate, axis):
    """``variable`` times ``gate`` along ``axis`` (-1 or -2) of the variable."""
    g = ops.cast(gate, variable.dtype)
    if axis == -2:
        g = ops.expand_dims(g, -1)
    return ops.multiply(variable, g)


def _call_substituted(layer, call, substitutions):
    """``call()`` with each ``(variable, value)`` read as ``value``.

    Keeps the layer's own state updates (BN moving statistics): the scope
    records them and they are assigned after the call, in the same order.
    """
    if not substitutions:
        return call()
    with keras.StatelessScope(substitutions, initialize_variables=False) as scope:
        outputs = call()
    replaced = {id(v) for v, _ in substitutions}
    for variable in layer.variables:
        if id(variable) not in replaced:
            value = scope.get_current_value(variable)
            if value is not None:
                variable.assign(value)
    return outputs


class _GateMixin:
    """Common plumbing: the link, and applying a gate on the last axis."""

    _dnas_role = None  # "defining" | "following"

    def _dnas_set_link(self, link):
        # object.__setattr__ keeps Keras from tracking the leader as a sub-layer.
        object.__setattr__(self, "_dnas_link", link)

    @property
    def dnas_link(self):
        return self.__dict__.get("_dnas_link")

    def _dnas_out_gate(self):
        link = self.dnas_link
        if link is None:
            return masks.owner_gate(self, centred=True) if self._dnas_role == "defining" \
                else None
        return _view_gate(link.out, link.out_repeat)

    def _dnas_in_gate(self):
        link = self.dnas_link
        return None if link is None else _view_gate(link.inputs, link.in_repeat)

    @staticmethod
    def _dnas_apply(x, g):
        if g is None:
            return x
        return x * ops.cast(g, x.dtype)

    def _dnas_fold_plan(self, gin, gout, inputs):
        """``(substitutions, gin_folded, gout_folded)``; subclasses say what folds."""
        return [], False, False

    def _dnas_time_subs(self, subs):
        """Substitutions plus the time masks of the kernel (see :mod:`.taps`)."""
        return subs

    def _dnas_gated_call(self, call, inputs, **kwargs):
        """Parent ``call`` with the input and output gates, folded where exact."""
        gin, gout = self._dnas_in_gate(), self._dnas_out_gate()
        subs, fin, fout = [], False, False
        if (gin is not None or gout is not None) and not _in_stateless_scope():
            subs, fin, fout = self._dnas_fold_plan(gin, gout, inputs)
        subs = self._dnas_time_subs(subs)
        if not fin:
            inputs = self._dnas_apply(inputs, gin)
        outputs = _call_substituted(self, lambda: call(inputs, **kwargs), subs)
        return outputs if fout else self._dnas_apply(outputs, gout)


class _DefiningMixin(_GateMixin):
    _dnas_role = "defining"

    def _dnas_fold_plan(self, gin, gout, inputs):
        # Kernel (..., in, out): the input gate scales rows, the output gate
        # columns and the bias. Not for LoRA, quantized or grouped layers.
        kernel = self.__dict__.get("_kernel")
        if (not isinstance(kernel, keras.Variable) or getattr(self, "lora_enabled", False)
                or getattr(self, "quantization_mode", None) is not None
                or getattr(self, "groups", 1) != 1 or len(kernel.shape) < 2):
            return [], False, False
        fin = gin is not None and _static_len(gin) == kernel.shape[-2]
        fout = (gout is not None and _is_linear(self.activation)
                and _static_len(gout) == kernel.shape[-1])
        if not (fin or fout):
            return [], False, False
        value = _folded(kernel, gin, -2) if fin else kernel
        subs = [(kernel, _folded(value, gout, -1) if fout else value)]
        if fout and self.use_bias:
            subs.append((self.bias, _folded(self.bias, gout, -1)))
        return subs, fin, fout

    @property
    def dnas_channels(self):
        return self.units if hasattr(self, "units") else self.filters

    def build(self, input_shape):
        super().build(input_shape)
        self.dnas_alpha = self.add_weight(
            name=masks.ALPHA_NAME,
            shape=(self.dnas_channels,),
            initializer="ones",
            trainable=True,
            autocast=False,
        )

    # Keras' Conv and Dense save kernel and bias under the positional keys "0", "1"; the mask
    # is saved by name. Files written before it was named hold it under the next position.
    def _dnas_alpha_key(self):
        return str(2 if self.use_bias else 1)

    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.built:
            store[masks.ALPHA_NAME] = self.dnas_alpha

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.built:
            key = masks.ALPHA_NAME if masks.ALPHA_NAME in store else self._dnas_alpha_key()
            self.dnas_alpha.assign(store[key])


class _SavedByPositionMixin(_DefiningMixin):
    """Keras' separable and transposed convs save every variable by position (Layer's
    default); the mask is saved by name, the others keep their positions. Older files hold
    the mask by position."""

    def _dnas_others(self):
        return [v for v in self.weights if v is not self.__dict__.get("dnas_alpha")]

    def save_own_variables(self, store):
        if not self.built:
            return super(_DefiningMixin, self).save_own_variables(store)
        for i, v in enumerate(self._dnas_others()):
            store[str(i)] = v
        store[masks.ALPHA_NAME] = self.dnas_alpha

    def load_own_variables(self, store):
        if not self.built or masks.ALPHA_NAME not in store:
            return super(_DefiningMixin, self).load_own_variables(store)
        for i, v in enumerate(self._dnas_others()):
            v.assign(store[str(i)])
        self.dnas_alpha.assign(store[masks.ALPHA_NAME])


class _SeparableMixin(_SavedByPositionMixin):
    """Separable conv: the input gate scales the depthwise kernel's channels, the
    output gate the pointwise kernel's columns and the bias."""

    def _dnas_fold_plan(self, gin, gout, inputs):
        dw = self.__dict__.get("depthwise_kernel")
        pw = self.__dict__.get("pointwise_kernel")
        if not (isinstance(dw, keras.Variable) and isinstance(pw, keras.Variable)):
            return [], False, False
        fin = gin is not None and _static_len(gin) == dw.shape[-2]
        fout = (gout is not None and _is_linear(self.activation)
                and _static_len(gout) == pw.shape[-1])
        subs = []
        if fin:
            subs.append((dw, _folded(dw, gin, -2)))
        if fout:
            subs.append((pw, _folded(pw, gout, -1)))
            if self.use_bias:
                subs.append((self.bias, _folded(self.bias, gout, -1)))
        return subs, fin, fout


class _FollowingMixin(_GateMixin):
    _dnas_role = "following"


class _DepthwiseFoldMixin(_FollowingMixin):
    def _dnas_fold_plan(self, gin, gout, inputs):
        # Kernel (..., channels, depth_multiplier=1): the gate scales axis -2.
        kernel = self.__dict__.get("kernel")
        if (gout is None or not isinstance(kernel, keras.Variable)
                or not _is_linear(self.activation) or kernel.shape[-1] != 1
                or _static_len(gout) != kernel.shape[-2]):
            return [], False, False
        subs = [(kernel, _folded(kernel, gout, -2))]
        if self.use_bias:
            subs.append((self.bias, _folded(self.bias, gout, -1)))
        return subs, False, True


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedConv1D(TimeMaskMixin, _DefiningMixin, keras.layers.Conv1D):
    """``keras.layers.Conv1D`` with a searchable mask over its output channels.

    Same constructor as ``keras.layers.Conv1D``. ``dnas_search_time(("receptive_field",
    "dilation"))`` before it is built searches its kernel taps too (PIT's ``dnas_beta`` /
    ``dnas_gamma`` masks, see :mod:`keras_dnas.layers.taps`).

    Example:

    >>> import keras, keras_dnas as kd
    >>> x = keras.Input((128, 6))
    >>> y = kd.layers.MaskedConv1D(16, 5, padding="causal")(x)
    >>> tuple(y.shape)
    (None, 128, 16)
    """

    def call(self, inputs):
        return self._dnas_gated_call(super().call, inputs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedConv2D(_DefiningMixin, keras.layers.Conv2D):
    """``keras.layers.Conv2D`` with a searchable mask over its output channels.

    Same constructor as ``keras.layers.Conv2D``.

    Example:

    >>> import keras, keras_dnas as kd
    >>> x = keras.Input((32, 32, 3))
    >>> y = kd.layers.MaskedConv2D(16, 3, padding="same")(x)
    >>> tuple(y.shape)
    (None, 32, 32, 16)
    """

    def call(self, inputs):
        return self._dnas_gated_call(super().call, inputs)


class _TransposedMixin(_SavedByPositionMixin):
    """Transposed conv: its kernel is (..., out, in), so the gates fold the other way round."""

    def _dnas_fold_plan(self, gin, gout, inputs):
        kernel = self.__dict__.get("_kernel")
        if not isinstance(kernel, keras.Variable) or len(kernel.shape) < 2:
            return [], False, False
        fin = gin is not None and _static_len(gin) == kernel.shape[-1]
        fout = (gout is not None and _is_linear(self.activation)
                and _static_len(gout) == kernel.shape[-2])
        if not (fin or fout):
            return [], False, False
        value = _folded(kernel, gin, -1) if fin else kernel
        subs = [(kernel, _folded(value, gout, -2) if fout else value)]
        if fout and self.use_bias:
            subs.append((self.bias, _folded(self.bias, gout, -1)))
        return subs, fin, fout


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedConv2DTranspose(_TransposedMixin, keras.layers.Conv2DTranspose):
    """``keras.layers.Conv2DTranspose`` with a searchable mask over its output channels.

    Same constructor as ``keras.layers.Conv2DTranspose`` (a U-Net's up-sampling path).

    Example:

    >>> import keras, keras_dnas as kd
    >>> x = keras.Input((8, 8, 4))
    >>> y = kd.layers.MaskedConv2DTranspose(6, 2, strides=2)(x)
    >>> tuple(y.shape)
    (None, 16, 16, 6)
    """

    def call(self, inputs):
        return self._dnas_gated_call(super().call, inputs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedConv1DTranspose(_TransposedMixin, keras.layers.Conv1DTranspose):
    """``keras.layers.Conv1DTranspose`` with a searchable mask over its output channels.

    Same constructor as ``keras.layers.Conv1DTranspose``.

    Example:

    >>> import keras, keras_dnas as kd
    >>> x = keras.Input((16, 4))
    >>> y = kd.layers.MaskedConv1DTranspose(6, 3, strides=2, padding="same")(x)
    >>> tuple(y.shape)
    (None, 32, 6)
    """

    def call(self, inputs):
        return self._dnas_gated_call(super().call, inputs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedDense(_DefiningMixin, keras.layers.Dense):
    """``keras.layers.Dense`` with a searchable mask over its units.

    Same constructor as ``keras.layers.Dense``.

    Example:

    >>> import keras, keras_dnas as kd
    >>> y = kd.layers.MaskedDense(32, activation="relu")(keras.Input((64,)))
    >>> tuple(y.shape)
    (None, 32)
    """

    def call(self, inputs, training=None):
        return self._dnas_gated_call(super().call, inputs, training=training)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedDepthwiseConv2D(_DepthwiseFoldMixin, keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` that re-masks its output (bias included).

    Same constructor as ``keras.layers.DepthwiseConv2D``; channels follow the
    input's group (``depth_multiplier=1``).

    Example:

    >>> import keras, keras_dnas as kd
    >>> y = kd.layers.MaskedDepthwiseConv2D(3, padding="same")(keras.Input((8, 8, 4)))
    >>> tuple(y.shape)
    (None, 8, 8, 4)
    """

    def call(self, inputs):
        return self._dnas_gated_call(super().call, inputs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedDepthwiseConv1D(TimeMaskMixin, _DepthwiseFoldMixin, keras.layers.DepthwiseConv1D):
    """``keras.layers.DepthwiseConv1D`` that re-masks its output (bias included).

    Same constructor; ``dnas_search_time`` as :class:`MaskedConv1D`.

    Example:

    >>> import keras, keras_dnas as kd
    >>> y = kd.layers.MaskedDepthwiseConv1D(3, padding="same")(keras.Input((16, 4)))
    >>> tuple(y.shape)
    (None, 16, 4)
    """

    def call(self, inputs):
        return self._dnas_gated_call(super().call, inputs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedBatchNormalization(_FollowingMixin, keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` that re-masks its output.

    BN shifts a zero channel to ``beta - gamma * mean / sqrt(var + eps)``;
    re-masking keeps pruned channels exactly zero. Same constructor as
    ``keras.layers.BatchNormalization``.

    Example:

    >>> import keras, keras_dnas as kd
    >>> y = kd.layers.MaskedBatchNormalization()(keras.Input((8, 8, 4)))
    >>> tuple(y.shape)
    (None, 8, 8, 4)
    """

    def _dnas_fold_plan(self, gin, gout, inputs):
        # y = x * (gamma * rsqrt(var + eps)) + (beta - mean * gamma * rsqrt(var + eps)):
        # with gamma * b and beta * b a closed channel is exactly 0, an open one unchanged.
        gamma = self.__dict__.get("gamma")
        if (gout is None or not self.scale or self.renorm
                or not isinstance(gamma, keras.Variable)
                or self.axis not in (-1, len(inputs.shape) - 1)
                or _static_len(gout) != gamma.shape[0]):
            return [], False, False
        subs = [(gamma, _folded(gamma, gout, -1))]
        if self.center:
            subs.append((self.beta, _folded(self.beta, gout, -1)))
        return subs, False, True

    def call(self, inputs, training=None, mask=None):
        return self._dnas_gated_call(super().call, inputs, training=training, mask=mask)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedSeparableConv2D(_SeparableMixin, keras.layers.SeparableConv2D):
    """``keras.layers.SeparableConv2D`` with a searchable mask over its output channels.

    The depthwise part keeps the input's channel group (its input is gated),
    the pointwise part defines a new one. Same constructor as
    ``keras.layers.SeparableConv2D``.

    Example:

    >>> import keras, keras_dnas as kd
    >>> y = kd.layers.MaskedSeparableConv2D(16, 3, padding="same")(keras.Input((8, 8, 4)))
    >>> tuple(y.shape)
    (None, 8, 8, 16)
    """

    def call(self, inputs):
        return self._dnas_gated_call(super().call, inputs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedSeparableConv1D(_SeparableMixin, keras.layers.SeparableConv1D):
    """``keras.layers.SeparableConv1D`` with a searchable mask over its output channels.

    Example:

    >>> import keras, keras_dnas as kd
    >>> y = kd.layers.MaskedSeparableConv1D(8, 3, padding="same")(keras.Input((16, 4)))
    >>> tuple(y.shape)
    (None, 16, 8)
    """

    def call(self, inputs):
        return self._dnas_gated_call(super().call, inputs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedLayerNormalization(_FollowingMixin, keras.layers.LayerNormalization):
    """``keras.layers.LayerNormalization`` over channels, with statistics of the open channels.

    Normalising over the channel axis mixes channels: a pruned (zero) channel
    would change the mean and variance of the kept ones. Once bound to a
    searchable group, the mean and variance are taken over the group's open
    channels only and the output is re-masked, so the layer computes exactly
    what the frozen model (a plain LayerNormalization over the kept channels)
    computes. Unbound, it is its parent. Same constructor as
    ``keras.layers.LayerNormalization``; channel axis only (``axis=-1``).

    Example:

    >>> import keras, keras_dnas as kd
    >>> y = kd.layers.MaskedLayerNormalization()(keras.Input((8, 4)))
    >>> tuple(y.shape)
    (None, 8, 4)
    """

    def call(self, inputs):
        g = self._dnas_out_gate()
        if g is None:
            return super().call(inputs)
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.cast(inputs, dtype)
        g = ops.cast(g, dtype)
        n = ops.sum(g)
        mean = ops.sum(x * g, axis=-1, keepdims=True) / n
        centred = (x - mean) * g
        variance = ops.sum(centred * centred, axis=-1, keepdims=True) / n
        inv = ops.rsqrt(variance + self.epsilon)
        # same arithmetic as keras.ops.layer_normalization, on the open channels' statistics
        if self.rms_scaling:
            outputs = x * inv
            if self.gamma is not None:
                outputs = outputs * ops.cast(self.gamma, dtype)
        else:
            if self.gamma is not None:
                inv = inv * ops.cast(self.gamma, dtype)
            res = -mean * inv
            if self.beta is not None:
                res = res + ops.cast(self.beta, dtype)
            outputs = x * inv + res
        return ops.cast(outputs * g, self.compute_dtype)


MASKED_CLASSES = (
    MaskedConv1D,
    MaskedConv2D,
    MaskedConv1DTranspose,
    MaskedConv2DTranspose,
    MaskedDense,
    MaskedDepthwiseConv2D,
    MaskedDepthwiseConv1D,
    MaskedBatchNormalization,
    MaskedSeparableConv2D,
    MaskedSeparableConv1D,
    MaskedLayerNormalization,
)

# Keras parent -> masked subclass, and back.
MASKED_OF = {cls.__bases__[-1]: cls for cls in MASKED_CLASSES}
PLAIN_OF = {cls: parent for parent, cls in MASKED_OF.items()}


def plain_class(layer):
    """The standard Keras class a (possibly masked) layer stands for."""
    return PLAIN_OF.get(type(layer), type(layer))


def is_masked(layer):
    """Whether ``layer`` is one of the ``kd.layers.Masked*`` classes."""
    return isinstance(layer, MASKED_CLASSES)
