"""Random Functional graphs and the exactness checks run on each (shared by the fuzzer's test and
benchmark).

:func:`build` turns a seed into a random Functional Keras DAG made of the layer roles keras_dnas
knows (or should know), with random widths (1, 2 and repeated small widths on purpose) and
random non-zero parameters. It is deterministic: the same ``(seed, roles)`` gives the same
graph, layer names and weights in any process.

:func:`run_checks` runs, on one graph:

- ``a``: ``kd.prepare`` with open masks computes the model's outputs (inference);
- ``b``: random masks, ``kd.freeze`` computes the searchable model's outputs;
- ``c``: ``kd.summary(frozen, "stm32h743")`` gives ``len(.tflite)`` of the frozen model's
  int8 conversion as flash and TFLite Micro's arena head (the head does not depend on the
  pointer size; the tail is reported, not checked: it is modelled for the 32-bit target);
- ``d``: the search-time memory model (``MemoryModel.from_model(searchable)``) at the
  frozen widths gives the frozen model's exact flash and planner replay (head and tail,
  32-bit pointers), when the full-width conversion has the same operators as the frozen one
  (otherwise the check is skipped and counted).

Every failure is a dict with the check, a class (exception type and normalised first line,
or which number differs) and the details, so the benchmark can group them.

Example:

>>> from tests import fuzz_graphs_lib as fz
>>> g = fz.build(3)
>>> g.model.name, g.seed
('fuzz_3', 3)
>>> fz.build(3).describe() == g.describe()   # deterministic
True
"""

import dataclasses
import re
import time
import warnings

import numpy as np

import keras

L = keras.layers

#: Roles the generator can draw, each switchable (``build(..., roles=...)``).
ALL_ROLES = (
    "conv1d",      # 1-D graphs (Conv1D and the 1-D variants below)
    "conv2d",      # 2-D graphs
    "strides",     # strided conv / depthwise / separable
    "causal",      # padding="causal" (1-D)
    "dilation",    # dilation_rate=2
    "depthwise",   # DepthwiseConv1D / 2D
    "separable",   # SeparableConv1D / 2D
    "dense",       # Flatten -> Dense, Dense on the channel axis
    "batchnorm",
    "activation",  # Activation layers of several names, ReLU, LeakyReLU
    "ops",         # keras.ops element-wise nodes: x * c, x + c, relu6, hard_sigmoid, hard swish
    "add",
    "multiply",
    "concat",
    "se",          # squeeze-excite: GAP, Reshape or keepdims, 1x1 conv or Dense, gate, Multiply
    "pool",
    "nested",      # a nested Functional / Sequential sub-model
)

#: Widths drawn for new channel groups: small ones on purpose (1 and 2 are edge cases of the
#: converter, equal small widths of the memory model's probe).
WIDTHS = (1, 2, 2, 3, 4, 4, 5, 6, 8, 12)

#: Gate value of a closed channel (below keras_dnas.masks.THRESHOLD) and of an open one.
CLOSED, OPEN = 0.2, 1.0

#: ``|a - b| <= RTOL * max|b|`` for every output (checks a and b).
RTOL = 1e-5

CHECKS = ("a", "b", "c", "d")


@dataclasses.dataclass
class FuzzGraph:
    """A generated model and what went into it."""

    seed: int
    roles: tuple          # roles allowed
    used: tuple           # roles the graph actually contains
    model: keras.Model

    def describe(self):
        """One line per layer: name, class, output shape (for reports and determinism)."""
        lines = []
        for layer in self.model.layers:
            shape = getattr(layer, "output", None)
            shape = tuple(shape.shape) if shape is not None and hasattr(shape, "shape") else ""
            lines.append(f"{layer.name} {type(layer).__name__} {shape}")
        return "\n".join(lines)


class _Builder:
    def __init__(self, rng, roles):
        self.rng = rng
        self.roles = set(roles)
        self.used = set()
        self.count = 0
        self.widths = []
        self.live = []  # earlier tensors, candidates for skip connections

    # --------------------------------------------------------------- helpers
    def name(self, kind):
        self.count += 1
        name = f"{kind}{self.count}"
        # Keras names an op node after its function (``keras.ops.relu6`` -> "relu6", then
        # "relu6_1", ...) and refuses a model with two operations of one name (seed 846:
        # ReLU layer "relu" + 6). Only such a name changes, so every other graph is as before.
        return f"{name}_layer" if hasattr(keras.ops, name) else name

    def chance(self, p):
        return self.rng.random() < p

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def width(self):
        if self.widths and self.chance(0.35):
            w = self.choice(self.widths)  # repeated widths: several groups of one size
        else:
            w = int(self.choice(WIDTHS))
        self.widths.append(w)
        return w

    @staticmethod
    def spatial(x):
        return [int(d) for d in x.shape[1:-1]]

    def dim(self, x):
        return len(x.shape) - 2  # 0 for (batch, features)

    def conv_args(self, x, allow_causal=True, kernel=None):
        """kernel, strides, padding, dilation valid for ``x``'s spatial size."""
        sp = self.spatial(x)
        k = kernel or int(self.choice((1, 2, 3, 3)))
        strides, dilation = 1, 1
        if "strides" in self.roles and min(sp) >= 4 and self.chance(0.3):
            strides = 2
            self.used.add("strides")
        elif "dilation" in self.roles and k > 1 and self.chance(0.3):
            dilation = 2
            self.used.add("dilation")
        paddings = ["same", "valid"]
        if self.dim(x) == 1 and "causal" in self.roles and allow_causal:
            paddings += ["causal", "causal"]
        padding = self.choice(paddings)
        if padding == "valid" and min(sp) < (k - 1) * dilation + 1 + 1:
            padding = "same"
        if padding == "causal":
            self.used.add("causal")
        return k, strides, padding, dilation

    def conv(self, x, filters=None, kernel=None, allow_causal=True, activation="random"):
        filters = filters or self.width()
        k, s, pad, d = self.conv_args(x, allow_causal, kernel)
        if activation == "random":
            activation = self.choice((None, None, "relu"))
        cls = L.Conv1D if self.dim(x) == 1 else L.Conv2D
        self.used.add("conv1d" if self.dim(x) == 1 else "conv2d")
        return cls(filters, k, strides=s, padding=pad, dilation_rate=d, activation=activation,
                   use_bias=self.chance(0.8), name=self.name("conv"))(x)

    def same_shape_branch(self, x):
        """A tensor of ``x``'s exact shape: an earlier one, or a new stride-1 'same' branch."""
        earlier = [t for t in self.live if tuple(t.shape) == tuple(x.shape) and t is not x]
        if earlier and self.chance(0.5):
            return self.choice(earlier)
        if self.dim(x) == 0:
            return L.Dense(int(x.shape[-1]), name=self.name("dense"))(x)
        cls = L.Conv1D if self.dim(x) == 1 else L.Conv2D
        b = cls(int(x.shape[-1]), int(self.choice((1, 3))), padding="same",
                use_bias=self.chance(0.8), name=self.name("conv"))(x)
        if "batchnorm" in self.roles and self.chance(0.5):
            b = L.BatchNormalization(name=self.name("bn"))(b)
            self.used.add("batchnorm")
        return b

    # --------------------------------------------------------------- blocks
    def block_conv(self, x):
        return self.conv(x)

    def block_depthwise(self, x):
        # Keras' DepthwiseConv1D has no causal padding.
        k, s, pad, d = self.conv_args(x, allow_causal=False, kernel=int(self.choice((2, 3))))
        cls = L.DepthwiseConv1D if self.dim(x) == 1 else L.DepthwiseConv2D
        return cls(k, strides=s, padding=pad, dilation_rate=d, use_bias=self.chance(0.7),
                   name=self.name("dw"))(x)

    def block_separable(self, x):
        k, s, pad, d = self.conv_args(x, allow_causal=False, kernel=int(self.choice((2, 3))))
        cls = L.SeparableConv1D if self.dim(x) == 1 else L.SeparableConv2D
        return cls(self.width(), k, strides=s, padding=pad, dilation_rate=d,
                   activation=self.choice((None, "relu")), use_bias=self.chance(0.8),
                   name=self.name("sep"))(x)

    def block_dense(self, x):
        if self.dim(x) > 0 and int(np.prod(x.shape[1:])) <= 256 and self.chance(0.6):
            x = L.Flatten(name=self.name("flatten"))(x)
        return L.Dense(self.width(), activation=self.choice((None, "relu")),
                       use_bias=self.chance(0.8), name=self.name("dense"))(x)

    def block_batchnorm(self, x):
        return L.BatchNormalization(name=self.name("bn"))(x)

    def block_activation(self, x):
        kind = int(self.rng.integers(4))
        if kind == 0:
            return L.ReLU(max_value=self.choice((None, 6.0)), name=self.name("relu"))(x)
        if kind == 1:
            return L.LeakyReLU(negative_slope=0.1, name=self.name("leaky"))(x)
        # Only activations with an int8 kernel in TFLite Micro (ELU, GELU, ... compute in float,
        # which to_tflite rightly refuses).
        name = self.choice(("relu", "relu6", "sigmoid", "tanh", "hard_sigmoid", "swish",
                            "hard_swish"))
        return L.Activation(name, name=self.name("act"))(x)

    def block_ops(self, x):
        kind = int(self.rng.integers(6))
        if kind == 0:
            return x * float(self.choice((0.5, 1.5, -0.25)))
        if kind == 1:
            return x + float(self.choice((0.5, -1.0, 3.0)))
        if kind == 2:
            return keras.ops.relu6(x)
        if kind == 3:
            return keras.ops.hard_sigmoid(x)
        if kind == 4:
            return keras.ops.sigmoid(x)
        return x * keras.ops.relu6(x + 3.0) * (1.0 / 6.0)  # hard swish, MobileNetV3's way

    def block_add(self, x):
        return L.Add(name=self.name("add"))([x, self.same_shape_branch(x)])

    def block_multiply(self, x):
        return L.Multiply(name=self.name("mul"))([x, self.same_shape_branch(x)])

    def block_concat(self, x):
        parts = [x] + [self.branch_like(x) for _ in range(int(self.rng.integers(1, 3)))]
        self.rng.shuffle(parts)
        return L.Concatenate(name=self.name("cat"))(parts)

    def branch_like(self, x):
        """A new branch with ``x``'s spatial shape and a random width."""
        if self.dim(x) == 0:
            return L.Dense(self.width(), name=self.name("dense"))(x)
        cls = L.Conv1D if self.dim(x) == 1 else L.Conv2D
        return cls(self.width(), int(self.choice((1, 3))), padding="same",
                   use_bias=self.chance(0.8), name=self.name("conv"))(x)

    def block_se(self, x):
        c = int(x.shape[-1])
        squeezed = max(1, c // int(self.choice((2, 4))))
        gate = self.choice(("sigmoid", "hard_sigmoid"))
        ones = (1,) * self.dim(x)
        if self.dim(x) == 0 or self.chance(0.3):
            # Dense variant: GAP -> Dense -> Dense(gate) -> Reshape -> Multiply.
            if self.dim(x) == 0:
                s = x
            else:
                gap = L.GlobalAveragePooling1D if self.dim(x) == 1 else L.GlobalAveragePooling2D
                s = gap(name=self.name("se_gap"))(x)
            s = L.Dense(squeezed, activation="relu", name=self.name("se_dense"))(s)
            s = L.Dense(c, activation=gate, name=self.name("se_dense"))(s)
            if self.dim(x):
                s = L.Reshape(ones + (c,), name=self.name("se_reshape"))(s)
        else:
            gap = L.GlobalAveragePooling1D if self.dim(x) == 1 else L.GlobalAveragePooling2D
            if self.chance(0.5):
                s = gap(keepdims=True, name=self.name("se_gap"))(x)
            else:
                s = gap(name=self.name("se_gap"))(x)
                s = L.Reshape(ones + (c,), name=self.name("se_reshape"))(s)
            cls = L.Conv1D if self.dim(x) == 1 else L.Conv2D
            s = cls(squeezed, 1, activation="relu", name=self.name("se_conv"))(s)
            s = cls(c, 1, activation=gate, name=self.name("se_conv"))(s)
        return L.Multiply(name=self.name("se_mul"))([x, s])

    def block_pool(self, x):
        one = self.dim(x) == 1
        cls = self.choice((L.MaxPooling1D, L.AveragePooling1D) if one
                          else (L.MaxPooling2D, L.AveragePooling2D))
        return cls(2, padding=self.choice(("valid", "same")), name=self.name("pool"))(x)

    def block_nested(self, x):
        inner_in = keras.Input(tuple(x.shape[1:]), name=self.name("inner_in"))
        # The random draws and names in the order of conv(): width, geometry, bias, name.
        filters = self.width()
        k, s, pad, d = self.conv_args(x)
        cls = L.Conv1D if self.dim(x) == 1 else L.Conv2D
        self.used.add("conv1d" if self.dim(x) == 1 else "conv2d")
        layers = [cls(filters, k, strides=s, padding=pad, dilation_rate=d,
                      use_bias=self.chance(0.8), name=self.name("conv"))]
        if "batchnorm" in self.roles:
            layers.append(L.BatchNormalization(name=self.name("bn")))
        layers.append(L.ReLU(name=self.name("relu")))
        if self.chance(0.5):
            h = inner_in
            for layer in layers:
                h = layer(h)
            inner = keras.Model(inner_in, h, name=self.name("inner"))
        else:  # the same layers as a Sequential
            inner = keras.Sequential([inner_in] + layers, name=self.name("inner_seq"))
        return inner(x)

    # --------------------------------------------------------------- graph
    def usable(self, role, x):
        sp = self.spatial(x) if self.dim(x) else []
        if role in ("conv", "depthwise", "separable", "pool", "nested"):
            if not sp:
                return False
        if role == "pool" and min(sp) < 2:
            return False
        if role in ("depthwise", "separable") and min(sp) < 2:
            return False
        return True


_BLOCK_ROLES = ("conv", "depthwise", "separable", "dense", "batchnorm", "activation", "ops",
                "add", "multiply", "concat", "se", "pool", "nested")
_WEIGHT = {"conv": 3.0, "batchnorm": 1.5, "activation": 1.5, "nested": 0.5}


def build(seed, roles=ALL_ROLES):
    """A random Functional model for ``seed`` using only ``roles`` (see :data:`ALL_ROLES`).

    The graph: an input (2-D image, 1-D signal, or a feature vector when neither conv role is
    allowed), 3 to 8 random blocks, then global pooling (or Flatten) and a Dense classifier.
    Weights are random and non-zero (no all-zero bias the converter could drop), BN
    statistics random and valid.
    """
    unknown = set(roles) - set(ALL_ROLES)
    if unknown:
        raise ValueError(f"Unknown fuzz roles {sorted(unknown)}; known: {list(ALL_ROLES)}")
    roles = tuple(r for r in ALL_ROLES if r in set(roles))
    rng = np.random.default_rng(seed)
    b = _Builder(rng, roles)
    dims = [d for d, r in ((1, "conv1d"), (2, "conv2d")) if r in roles] or [0]
    dim = b.choice(dims)
    if dim == 2:
        shape = (int(rng.integers(5, 11)), int(rng.integers(5, 11)), int(rng.integers(1, 4)))
    elif dim == 1:
        shape = (int(rng.integers(10, 33)), int(rng.integers(1, 5)))
    else:
        shape = (int(rng.integers(4, 17)),)
    keras.backend.clear_session()  # deterministic auto names (keras.ops nodes)
    inp = keras.Input(shape, name="x")
    x = inp
    if dim:
        x = b.conv(x)  # a searchable group to start from
    else:
        x = L.Dense(b.width(), activation="relu", name=b.name("dense"))(x)
        b.used.add("dense")
    block_role = {"conv": None, "depthwise": "depthwise", "separable": "separable",
                  "dense": "dense", "batchnorm": "batchnorm", "activation": "activation",
                  "ops": "ops", "add": "add", "multiply": "multiply", "concat": "concat",
                  "se": "se", "pool": "pool", "nested": "nested"}
    for _ in range(int(rng.integers(3, 9))):
        options = [k for k in _BLOCK_ROLES
                   if (block_role[k] is None or block_role[k] in roles) and b.usable(k, x)]
        weights = np.array([_WEIGHT.get(k, 1.0) for k in options])
        kind = options[int(rng.choice(len(options), p=weights / weights.sum()))]
        if kind == "dense" and dim and b.chance(0.5):
            continue  # keep most graphs convolutional until the head
        x = getattr(b, f"block_{kind}")(x)
        if block_role[kind]:
            b.used.add(block_role[kind])
        b.live.append(x)
    if b.dim(x):
        if "dense" in roles and int(np.prod(x.shape[1:])) <= 256 and b.chance(0.4):
            x = L.Flatten(name=b.name("flatten"))(x)
            b.used.add("dense")
        else:
            gap = L.GlobalAveragePooling1D if b.dim(x) == 1 else L.GlobalAveragePooling2D
            x = gap(name=b.name("gap"))(x)
    y = L.Dense(int(rng.integers(2, 6)), name="classifier")(x)
    model = keras.Model(inp, y, name=f"fuzz_{seed}")
    randomize(model, rng)
    return FuzzGraph(seed=seed, roles=roles, used=tuple(r for r in ALL_ROLES if r in b.used),
                     model=model)


def randomize(model, rng):
    """Random non-zero parameters at a scale that keeps activations O(1)."""
    for w in model.weights:
        if "float" not in str(w.dtype):
            continue
        name, shape = w.name, tuple(w.shape)
        if name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name in ("beta", "moving_mean", "bias"):
            value = rng.normal(0.0, 0.2, shape)
        elif name == "depthwise_kernel":
            value = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-2])), shape)
        else:  # kernel, pointwise_kernel
            value = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), shape)
        w.assign(value.astype(str(w.dtype)))


def sample(model, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n,) + tuple(model.inputs[0].shape[1:])).astype("float32")


def close_random_masks(searchable, seed):
    """Close a random share (10-80 %) of every searchable group; sometimes all but one."""
    import keras_dnas as kd

    rng = np.random.default_rng(seed)
    for v in kd.masks.mask_variables(searchable):
        n = int(v.shape[0])
        if rng.random() < 0.15:
            alpha = np.full(n, CLOSED)  # keep-alive keeps one channel
            alpha[int(rng.integers(n))] = 0.3
        else:
            alpha = np.where(rng.random(n) < rng.uniform(0.2, 0.9), OPEN, CLOSED)
        v.assign(alpha.astype("float32"))


# ------------------------------------------------------------------- checks
def classify(error):
    """Stable class of an exception: type and first line with names and numbers normalised."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\[[^\]]*\]", "[…]", text)
    text = re.sub(r"\(\s*[-\d, ]+\)", "(…)", text)
    text = re.sub(r"\d+", "N", text)
    return f"{type(error).__name__}: {text[:160]}"


def _rel_error(got, want):
    got, want = np.asarray(got, "float64"), np.asarray(want, "float64")
    if got.shape != want.shape:
        return float("inf")
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-6))


#: Relative flash error allowed in check d when the frozen conversion's tensors are not the
#: rescaled full-width ones (constants shared or dropped at those widths).
FLASH_ESTIMATE_TOLERANCE = 0.02


def run_checks(graph, checks=CHECKS, mask_seed=None, alphas=None):
    """Run the checks on one :class:`FuzzGraph`; never raises for a library failure.

    Returns:
        A dict: ``seed``, ``used`` roles, ``groups`` / ``searchable`` counts, ``failures``
        (list of ``{"check", "class", "detail"}``), ``skipped`` (checks not comparable, with
        why), ``numbers`` (measured values) and ``seconds`` per stage.

    ``alphas`` (``{layer name: mask values}``) sets chosen masks instead of random ones, for
    hand-written reproducers.
    """
    import keras_dnas as kd
    from keras_dnas.costs import arena
    from keras_dnas.memory import MemoryModel
    from keras_dnas.graph.counts import hard_counts
    from keras_dnas._flatbuffer import read_tflite

    model = graph.model
    result = {"seed": graph.seed, "used": list(graph.used), "layers": len(model.layers),
              "failures": [], "skipped": {}, "numbers": {}, "seconds": {}, "ran": []}
    fail = result["failures"]
    ran = result["ran"]  # checks whose comparison was made (a failure before it leaves it out)
    x = sample(model)
    clock = time.perf_counter()

    def stage(name):
        nonlocal clock
        now = time.perf_counter()
        result["seconds"][name] = round(now - clock, 3)
        clock = now

    def guarded(check, fn):
        try:
            return fn()
        except Exception as e:  # the fuzzer records every library failure
            fail.append({"check": check, "class": f"{check}: {classify(e)}",
                         "detail": f"{type(e).__name__}: {str(e)[:600]}"})
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            search = kd.prepare(model)
        except ValueError as e:
            if not _nothing_to_search(e, model):
                raise
            # The intended error for a graph whose every group is frozen by the roles (e.g.
            # seed 193: a Multiply of a concatenation and one conv's channels): not a failure.
            result["skipped"]["a"] = f"not searchable: {str(e)[:600]}"
            return result
        except Exception as e:  # the fuzzer records every library failure
            fail.append({"check": "a", "class": f"a: {classify(e)}",
                         "detail": f"{type(e).__name__}: {str(e)[:600]}"})
            search = None
    stage("prepare")
    if search is None:
        return result
    plan = search.dnas_plan
    result["groups"] = len(plan.groups)
    result["searchable"] = len(plan.searchable_groups())
    if "a" in checks:
        err = guarded("a", lambda: _rel_error(search(x, training=False), model(x, training=False)))
        result["numbers"]["a_rel_error"] = err
        if err is not None:
            ran.append("a")
        if err is not None and not err <= RTOL:
            fail.append({"check": "a", "class": "a: open masks change the outputs",
                         "detail": f"relative error {err:.3g}"})
    if alphas is None:
        close_random_masks(search, graph.seed if mask_seed is None else mask_seed)
    else:
        for name, alpha in alphas.items():
            search.get_layer(name).dnas_alpha.assign(np.asarray(alpha, "float32"))
    frozen = guarded("b", lambda: kd.freeze(search, verbose=0))
    stage("freeze")
    if frozen is None:
        return result
    if "b" in checks:
        err = guarded("b", lambda: _rel_error(frozen(x, training=False),
                                              search(x, training=False)))
        result["numbers"]["b_rel_error"] = err
        if err is not None:
            ran.append("b")
        if err is not None and not err <= RTOL:
            fail.append({"check": "b", "class": "b: frozen outputs differ from the masked model",
                         "detail": f"relative error {err:.3g}"})
    counts = hard_counts(search, plan)
    result["counts"] = [int(c) for c in counts]
    result["full"] = [int(g.size) for g in plan.groups]
    if not ({"c", "d"} & set(checks)):
        return result
    rep = sample(model, n=8, seed=1)
    tflite = guarded("c", lambda: kd.export.to_tflite(frozen, representative_data=rep))
    stage("convert")
    if tflite is None:
        return result
    aborts = kd.export.tflm_preflight(tflite)
    if aborts:
        # Random weights can leave a layer constant on the calibration data (a dead ReLU), and
        # TFLite Micro aborts on such an int8 model (seed 233). The library says so, naming the
        # layer, at export (a warning) and when measuring (RuntimeError from the child process):
        # not applicable, as for a user's model that cannot run.
        result["skipped"]["c"] = result["skipped"]["d"] = "TFLite Micro precondition: " + \
            "; ".join(f"operator {p['op_index']} ({p['op']}): {p['reason'][:200]}"
                      for p in aborts)
        return result
    usage = guarded("c", lambda: kd.export.arena_usage(tflite))
    stage("tflm")
    if usage is None:
        return result
    real = read_tflite(tflite)
    replay = arena.tflite_arena(real, pointer_bytes=4)
    numbers = result["numbers"]
    numbers.update(tflite_bytes=len(tflite), tflm_head=usage["arena_head_bytes"],
                   tflm_tail_host=usage["arena_tail_bytes"], replay_head=replay["head"],
                   replay_tail=replay["tail"])
    if "c" in checks:
        # kd.summary converts with the calibration data of the file it is compared with: an
        # int8 file's constants can depend on it (seed 78: a width-1 conv after a nearly
        # constant input, whose int32 bias saturates on one sample and not on another, so the
        # converter rescales that kernel and other constants become equal: 16 B).
        s = guarded("c", lambda: kd.summary(frozen, "stm32h743", representative_data=rep))
        stage("summary")
        if s is not None:
            numbers.update(summary_flash=s["flash_bytes"], summary_head=s["arena_head_bytes"],
                           summary_tail=s["arena_tail_bytes"])
            ran.append("c")
            if s["flash_bytes"] != len(tflite):
                fail.append({"check": "c", "class": "c: summary flash != len(tflite)",
                             "detail": f"summary {s['flash_bytes']} B, tflite {len(tflite)} B "
                                       f"({s['flash_bytes'] - len(tflite):+d})"})
            if s["arena_head_bytes"] != usage["arena_head_bytes"]:
                fail.append({"check": "c", "class": "c: summary arena head != TFLM head",
                             "detail": f"summary {s['arena_head_bytes']} B, TFLM "
                                       f"{usage['arena_head_bytes']} B"})
    if "d" in checks:
        memory = guarded("d", lambda: MemoryModel.from_model(search, pointer_bytes=4))
        stage("memory_model")
        if memory is not None:
            full_ops = [op.name for op in memory.full.operators]
            real_ops = [op.name for op in real.operators]
            if full_ops != real_ops:
                result["skipped"]["d"] = "operators differ: full width " \
                    f"{full_ops}, frozen {real_ops}"
            else:
                # Why a number may differ: the converter's tensors at the frozen widths are not
                # the rescaled full-width ones (constants shared or dropped, shapes), or they
                # are and only the serialisation differs.
                scaled = guarded("d", lambda: memory.scaled_model(counts))
                if scaled is None:
                    return result
                want = sorted((t.name, tuple(t.shape), t.n_scales) for t in real.tensors)
                got = sorted((t.name, tuple(t.shape), t.n_scales) for t in scaled.tensors)
                if [t[0] for t in got] != [t[0] for t in want]:
                    why = "the frozen conversion has other tensors (constants shared or dropped)"
                    result["numbers"]["d_tensor_counts"] = [len(real.tensors),
                                                            len(scaled.tensors)]
                elif got != want:
                    why = "the rescaled tensor shapes differ from the frozen conversion's"
                elif _shared_buffers(real) != _shared_buffers(scaled):
                    # The converter stores equal constants once, and which are equal depends on
                    # the weights: a 1-element int8 kernel (a width-1 conv on one channel) is
                    # +-127 by its weight's sign, so the frozen file shares what the generic
                    # full-width copy stores twice (seeds 78: +16 B, 91: +32 B). An estimate.
                    why = "same tensors, equal constants stored once (weight-dependent)"
                else:
                    why = "same tensors and shapes"
                result["d_tensors"] = why
                flash = guarded("d", lambda: int(memory.flash(counts)))
                parts = guarded("d", lambda: memory.ram_parts(counts))
                if flash is not None and parts is not None:
                    ran.append("d")
                if flash is not None:
                    numbers["d_flash"] = flash
                    # Exact where the frozen conversion has the rescaled full-width tensors;
                    # where the converter shares or drops constants at the frozen widths (a
                    # different structure, which freeze certifies on the real file), the
                    # search-time value is an estimate: within FLASH_ESTIMATE_TOLERANCE.
                    tolerance = 0 if why == "same tensors and shapes" else \
                        FLASH_ESTIMATE_TOLERANCE * len(tflite)
                    if abs(flash - len(tflite)) > tolerance:
                        fail.append({"check": "d",
                                     "class": "d: search-time flash != len(frozen tflite); " + why,
                                     "detail": f"model {flash} B, tflite {len(tflite)} B "
                                               f"({flash - len(tflite):+d})"})
                if parts is not None:
                    numbers.update(d_head=parts["head"], d_tail=parts["tail"])
                    if parts["head"] != usage["arena_head_bytes"]:
                        fail.append({"check": "d",
                                     "class": "d: search-time arena head != TFLM head; " + why,
                                     "detail": f"model {parts['head']} B, TFLM "
                                               f"{usage['arena_head_bytes']} B"})
                    if parts["tail"] != replay["tail"]:
                        fail.append({"check": "d",
                                     "class": "d: search-time arena tail != replay on "
                                              "frozen; " + why,
                                     "detail": f"model {parts['tail']} B, replay "
                                               f"{replay['tail']} B"})
    return result


def _shared_buffers(model):
    """The constant tensors (by name) stored in one buffer, for every buffer holding several."""
    groups = {}
    for t in model.tensors:
        if model.is_constant(t.index):
            groups.setdefault(t.buffer, []).append(t.name)
    return sorted(sorted(names) for names in groups.values() if len(names) > 1)


def _nothing_to_search(error, model):
    """True when ``error`` is prepare's "no searchable channel group" and the plan indeed has
    none (checked independently of the message)."""
    from keras_dnas.graph import analyze, walk

    if "has no searchable channel group" not in str(error):
        return False
    return not analyze(walk.flatten(model)).searchable_groups()


def check_model(model, alphas=None, checks=CHECKS, seed=0):
    """:func:`run_checks` on a hand-written model (random non-zero weights from ``seed``)."""
    randomize(model, np.random.default_rng(seed))
    return run_checks(FuzzGraph(seed, (), (), model), checks, alphas=alphas)


def repro_snippet(seed, roles=ALL_ROLES):
    """Python that rebuilds graph ``seed`` and reruns its checks."""
    extra = "" if tuple(roles) == ALL_ROLES else f", roles={tuple(roles)!r}"
    return ("from tests import fuzz_graphs_lib as fz\n"
            f"g = fz.build({seed}{extra})\n"
            "print(g.describe())\n"
            "print(fz.run_checks(g)['failures'])")


def fuzz_one(seed, roles=ALL_ROLES, checks=CHECKS):
    """Build graph ``seed`` and run its checks; a graph the generator cannot build is a
    ``build`` failure (a generator bug, not a library one). Adds ``cpu_s`` and ``wall_s``."""
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        graph = build(seed, roles)
    except Exception as e:
        result = {"seed": seed, "used": [], "failures": [
            {"check": "build", "class": f"build: {classify(e)}", "detail": str(e)[:600]}],
            "skipped": {}, "numbers": {}, "seconds": {}}
    else:
        result = run_checks(graph, checks)
    result["cpu_s"] = round(time.process_time() - cpu, 3)
    result["wall_s"] = round(time.perf_counter() - wall, 3)
    return result
