"""Path-based choice blocks: one of N alternative blocks, chosen by the search.

``Choice(alternatives)(x)`` does not add one opaque node to a functional graph:
calling it calls every alternative on ``x`` (a Keras layer, or a Sequential /
Functional block, which :func:`keras_dnas.graph.walk.flatten` inlines like any
nested model) and then the ``Choice`` layer itself on their outputs. The layer
in the graph is therefore a merge of N tensors of one shape, like ``Add``:
graph analysis joins the channel groups of every alternative's output with
the output's (``roles.ROLES``), masks inside the alternatives are searched as
usual, and the plan records which layers belong to which alternative
(``ChannelPlan.choices``), so costs can weight them by their probability.

The merge owns ``dnas_choice``, one trainable logit per alternative
(initialised to 0, so the first alternative is the argmax at the start):

- training: hard Gumbel-softmax with a straight-through gradient (one
  alternative per step, the gradient of the soft sample), or with
  ``mode="softmax"`` the softmax of ``logits / temperature``;
- inference: the argmax alternative only, selected exactly (no mixing), so the
  searchable model and :func:`keras_dnas.freeze`'s model, which keeps only that
  alternative, compute the same.

The temperature is ``temperature`` from the config unless a search binds a
variable (``DNASCallback`` anneals it without retracing the train step).

``reference`` names the alternative that carries trained weights (``kd.prepare``
sets it to the seed's own block). While a search binds its distillation gate
(``DNASCallback``'s warm-up), the block outputs the reference alone, so the
layers around it keep the function they were trained for, and every other
alternative with weights (the *students*) learns to reproduce the reference's
output: a loss ``mean((student - stop_gradient(reference))**2)``, relative to
the reference's mean square, is added for each. Sampling untrained alternatives
instead would train the shared layers on their outputs (BENCHMARKS.md, "Choice
blocks"). While a
search runs, the logits are read through the same hooks as a channel mask
(:class:`keras_dnas.masks.SearchHooks`: frozen during warm-up, learning rate
scaled like the masks'), so a block's choice can move as fast as its channels.
"""

import keras
from keras import ops

from keras_dnas import masks
from keras_dnas._ste import scale_gradient, straight_through

_PACKAGE = "keras_dnas"

MODES = ("gumbel", "softmax")


def _as_layer(alternative, index, name):
    if isinstance(alternative, str) and alternative == "identity":
        return keras.layers.Identity(name=f"{name}_identity_{index}")
    if isinstance(alternative, keras.layers.Layer):
        return alternative
    raise ValueError(
        f"Choice '{name}': alternative {index} must be a Keras layer, a Sequential / Functional "
        f"block or 'identity'. Received: {alternative!r}")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Choice(keras.layers.Layer):
    """One of several alternative blocks mapping the same input to the same output shape.

    Args:
        alternatives: list of at least two Keras layers, Sequential / Functional
            blocks or ``"identity"``. Each is called on the block's input; every
            output must have the same shape (checked when the block is called).
        mode: ``"gumbel"`` (default: hard Gumbel-softmax, straight-through) or
            ``"softmax"`` (soft mixture at ``temperature``) during training.
        temperature: temperature of the softmax (annealed by ``kd.DNASCallback``).
        seed: seed of the Gumbel noise (``keras.random.SeedGenerator``).
        reference: index of the alternative with trained weights, which the others
            imitate during a search's warm-up (``None``: no imitation, the warm-up
            samples every alternative).
        num_alternatives: set by ``from_config`` (a reloaded model holds the
            alternatives as its own layers; the layer is then the merge only).
        students: set by ``from_config``: the alternatives that imitate the
            reference (those with weights; an identity has nothing to learn).

    Example:

    >>> import keras, keras_dnas as kd
    >>> x = keras.Input((8, 8, 4))
    >>> y = kd.layers.Choice([keras.layers.Conv2D(4, 3, padding="same"),
    ...                       keras.layers.Conv2D(4, 5, padding="same"), "identity"],
    ...                      name="block")(x)
    >>> model = keras.Model(x, y)
    >>> tuple(model.get_layer("block").dnas_choice.shape)
    (3,)
    """

    def __init__(self, alternatives=None, mode="gumbel", temperature=1.0, seed=None,
                 reference=None, num_alternatives=None, students=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"Choice '{self.name}': mode must be one of {MODES}. "
                             f"Received: mode={mode!r}")
        if not float(temperature) > 0:
            raise ValueError(f"Choice '{self.name}': temperature must be > 0. "
                             f"Received: temperature={temperature!r}")
        alts = None
        if alternatives is not None:
            alts = tuple(_as_layer(a, i, self.name) for i, a in enumerate(alternatives))
            if len(alts) < 2:
                raise ValueError(f"Choice '{self.name}' needs at least two alternatives. "
                                 f"Received: {len(alts)}")
            num_alternatives = len(alts)
        if num_alternatives is None or int(num_alternatives) < 2:
            raise ValueError(f"Choice '{self.name}' needs alternatives= (at least two).")
        # not tracked by Keras: the alternatives become layers of the model they are called in
        object.__setattr__(self, "_alternatives", alts)
        self.num_alternatives = int(num_alternatives)
        self.mode = mode
        self.temperature = float(temperature)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        if reference is not None and not (isinstance(reference, int)
                                          and 0 <= reference < self.num_alternatives):
            raise ValueError(f"Choice '{self.name}': reference must be the index of an "
                             f"alternative (0 to {self.num_alternatives - 1}) or None. "
                             f"Received: reference={reference!r}")
        self.reference = reference
        self.students = None if students is None else [int(i) for i in students]

    @property
    def alternatives(self):
        return self._alternatives

    def __call__(self, inputs, *args, **kwargs):
        if self._alternatives is None or isinstance(inputs, (list, tuple)):
            return super().__call__(inputs, *args, **kwargs)
        training = kwargs.get("training")
        outs = []
        for alt in self._alternatives:
            call_kwargs = {"training": training} if training is not None else {}
            outs.append(alt(inputs, **call_kwargs))
        first = tuple(outs[0].shape)
        for i, out in enumerate(outs):
            if isinstance(out, (list, tuple)) or tuple(out.shape) != first:
                shape = [tuple(o.shape) for o in out] if isinstance(out, (list, tuple)) \
                    else tuple(out.shape)
                raise ValueError(
                    f"Choice '{self.name}': alternative {i} ('{self._alternatives[i].name}') "
                    f"maps the input {tuple(inputs.shape)} to {shape}, but alternative 0 "
                    f"('{self._alternatives[0].name}') maps it to {first}. Every alternative "
                    "must give the same output shape (same filters, strides and padding).")
        if self.reference is not None and self.students is None:
            # known once the alternatives are built: those with weights can learn
            self.students = [i for i, alt in enumerate(self._alternatives)
                             if i != self.reference and alt.trainable_weights]
        return super().__call__(outs, **kwargs)

    def build(self, input_shape):
        shapes = input_shape if isinstance(input_shape, (list, tuple)) and \
            isinstance(input_shape[0], (list, tuple)) else None
        if shapes is None or len(shapes) != self.num_alternatives:
            raise ValueError(
                f"Choice '{self.name}' merges {self.num_alternatives} alternative outputs. "
                f"Received input shape {input_shape}")
        self.dnas_choice = self.add_weight(
            name=masks.CHOICE_NAME, shape=(self.num_alternatives,), initializer="zeros",
            trainable=True, autocast=False)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def _logits(self):
        """The logits the block reads: ``dnas_choice`` itself, or while a search runs its
        :class:`~keras_dnas.masks.SearchHooks` view (learning-rate scale, warm-up gate)."""
        logits = ops.convert_to_tensor(self.dnas_choice)
        hooks = self.__dict__.get(masks.HOOKS_ATTR)
        if hooks is None:
            return logits
        logits = ops.convert_to_tensor(hooks.effective(logits))
        if hooks.grad_scale is not None:  # 0 during warm-up: the forward value is unchanged
            logits = scale_gradient(logits, hooks.grad_scale)
        return logits

    def _temperature(self):
        t = self.__dict__.get("_dnas_temperature")
        return self.temperature if t is None else ops.cast(t, "float32")

    def probabilities(self):
        """``softmax(logits / temperature)`` (what costs weight the alternatives by)."""
        return ops.softmax(self._logits() / self._temperature())

    def chosen(self):
        """Index of the argmax alternative (a Python int)."""
        return int(ops.convert_to_numpy(ops.argmax(self._logits())))

    def _distill(self, inputs):
        """The distillation gate (1 during a search's warm-up), after adding the students'
        imitation loss; ``None`` when the block does not distill."""
        gate = self.__dict__.get("_dnas_distill")
        if gate is None or self.reference is None or not self.students:
            return None
        gate = ops.cast(gate, "float32")
        target = ops.stop_gradient(ops.cast(inputs[self.reference], "float32"))
        scale = ops.mean(ops.square(target)) + 1e-6
        loss = 0.0
        for i in self.students:
            loss = loss + ops.mean(ops.square(ops.cast(inputs[i], "float32") - target)) / scale
        self.add_loss(gate * loss)
        return gate

    def call(self, inputs, training=None):
        stacked = ops.stack(inputs, axis=0)
        if not training:
            # the argmax alternative, selected exactly (what the frozen model keeps)
            return ops.take(stacked, ops.argmax(self._logits()), axis=0)
        gate = self._distill(inputs)
        logits = self._logits()
        if self.mode == "gumbel":
            u = keras.random.uniform(ops.shape(logits), minval=1e-6, maxval=1.0 - 1e-6,
                                     seed=self.seed_generator)
            logits = logits - ops.log(-ops.log(u))
        soft = ops.softmax(logits / self._temperature())
        if self.mode == "gumbel":
            hard = ops.one_hot(ops.argmax(soft), self.num_alternatives, dtype=soft.dtype)
            weights = straight_through(hard, soft)
        else:
            weights = soft
        if gate is not None:  # gate 1: the reference alone (a variable: no retracing)
            reference = ops.one_hot(self.reference, self.num_alternatives, dtype=weights.dtype)
            weights = gate * reference + (1.0 - gate) * weights
        weights = ops.cast(weights, stacked.dtype)
        shape = [self.num_alternatives] + [1] * (len(stacked.shape) - 1)
        return ops.sum(stacked * ops.reshape(weights, shape), axis=0)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "temperature": self.temperature, "seed": self.seed,
                       "reference": self.reference, "num_alternatives": self.num_alternatives,
                       "students": self.students})
        return config


def is_choice(layer):
    """Whether ``layer`` is a :class:`Choice` merge."""
    return isinstance(layer, Choice)
