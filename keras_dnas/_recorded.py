"""Soft costs recorded once as plain data, then evaluated with a few vectorised ops.

The cost functions (``costs.compute``, ``costs.latency``, ``costs.arena``, ``memory``) are
scalar Python: on Keras tensors each ``+`` and ``*`` is one op, so a metric is a graph of
thousands of scalar ops that the search's train step traces, differentiates and runs. Here
they run **once** on :class:`Value` counts instead (:func:`record`), and what they compute is
kept as data:

- a :class:`Value` is a polynomial, ``sum(coefficient * product of nodes)``;
- a node is an input (one soft count) or a non-linear function of polynomials of earlier
  nodes: a straight-through ``ceil`` / ``floor`` of a quotient, an alignment, a step, an
  equality, ``round``, ``mod``, ``relu``, ``max`` (the few the cost functions use on tensors,
  through the helpers below, which give today's ops on tensors).

:class:`Recording` evaluates it stage by stage (a stage: the nodes whose arguments are known):
per stage one gather, product and segment sum for every polynomial argument, then one short
op chain per node kind on its contiguous block of arguments. Forward values
and straight-through gradients are those of the scalar functions on tensors
(``tests/test_recorded.py``), in a few hundred ops instead of thousands (HAPT's TCN: 577
against 2,496 forward, 1,415 against 3,255 with the gradient; ``benchmarks/penalty_cost.py``);
exact (integer) costs never pass here.
"""

import numpy as np
from keras import ops

_NUMBERS = (int, float, np.integer, np.floating)
#: A product of two polynomials with more terms than this is taken as a node first, so
#: expanding never blows up (a concatenation of many groups times a width).
MAX_TERMS = 64


class NotRecordable(TypeError):
    """A cost function asked a :class:`Value` for something it cannot record (a truth value,
    a comparison, a Python number)."""


def _number(x):
    return isinstance(x, _NUMBERS) or (isinstance(x, np.ndarray) and x.ndim == 0)


class _Tape:
    """The nodes of one recording, in creation order (arguments come before their node)."""

    def __init__(self):
        self.nodes = []  # (kind, args: tuple of term tuples, param)
        self._index = {}

    def node(self, kind, args, param=None):
        key = (kind, tuple(tuple(sorted(a.items())) for a in args), param)
        found = self._index.get(key)
        if found is None:
            found = self._index[key] = len(self.nodes)
            self.nodes.append(key)
        return Value(self, {(found,): 1.0})


def _accumulate(terms, monomial, coefficient):
    """Add ``coefficient`` to ``terms[monomial]``, dropping the monomial when it cancels."""
    c = terms.get(monomial, 0.0) + coefficient
    if c:
        terms[monomial] = c
    else:
        terms.pop(monomial, None)


class Value:
    """A scalar of a recording: ``{monomial: coefficient}``, a monomial being the sorted
    tuple of the nodes it multiplies (``()`` for the constant)."""

    __slots__ = ("tape", "terms")
    __array_ufunc__ = None  # numpy scalars defer to our operators

    def __init__(self, tape, terms):
        self.tape, self.terms = tape, terms

    # ------------------------------------------------------------------ arithmetic
    def _lift(self, other):
        if isinstance(other, Value):
            if other.tape is not self.tape:
                raise NotRecordable("Values of two recordings cannot be combined.")
            return other.terms
        if _number(other):
            return {(): float(other)} if other else {}
        return None

    def __add__(self, other):
        terms = self._lift(other)
        if terms is None:
            return NotImplemented
        out = dict(self.terms)
        for m, c in terms.items():
            _accumulate(out, m, c)
        return Value(self.tape, out)

    __radd__ = __add__

    def __neg__(self):
        return Value(self.tape, {m: -c for m, c in self.terms.items()})

    def __sub__(self, other):
        terms = self._lift(other)
        if terms is None:
            return NotImplemented
        return self + Value(self.tape, {m: -c for m, c in terms.items()})

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        if _number(other):
            other = float(other)
            return Value(self.tape, {m: c * other for m, c in self.terms.items()} if other
                         else {})
        if not isinstance(other, Value):
            return NotImplemented
        a, b = self._lift(other), self.terms
        if len(a) * len(b) > MAX_TERMS:  # expand a product of a node instead
            if len(a) > 1:
                a = Value(self.tape, a).node().terms
            if len(b) > 1 and len(a) * len(b) > MAX_TERMS:
                b = self.node().terms
        out = {}
        for ma, ca in a.items():
            for mb, cb in b.items():
                _accumulate(out, tuple(sorted(ma + mb)), ca * cb)
        return Value(self.tape, out)

    __rmul__ = __mul__

    def __truediv__(self, other):
        if not _number(other):
            return NotImplemented
        return self * (1.0 / float(other))

    def __bool__(self):
        raise NotRecordable("A recorded cost has no truth value.")

    def __float__(self):
        raise NotRecordable("A recorded cost has no Python value.")

    __int__ = __index__ = __float__

    # ------------------------------------------------------------------ nodes
    def node(self, kind="id", param=None, *others):
        return self.tape.node(kind, (self.terms,) + tuple(
            as_value(self.tape, o).terms for o in others), param)


# ---------------------------------------------------------------------------------- helpers

def as_value(tape, x):
    """``x`` (a number, or a Value of ``tape``) as a Value of ``tape``."""
    terms = Value(tape, {})._lift(x)
    if terms is None:
        raise NotRecordable(f"A {type(x).__name__} is not a number of the recording.")
    return Value(tape, dict(terms))

# ceil_div, floor_div and aligned record a Value (their tensor forms are costs.latency's and
# _ste's); the others take tensors (the ops the cost functions always used) or Values.


def ceil_div(x, n):
    """``ceil(x / n)``, straight-through: ``q + stop_gradient(ceil(q) - q)``, ``q = x / n``."""
    return x.node("ceil_div", float(n))


def floor_div(x, n):
    """``floor(x / n)``, straight-through (see :func:`ceil_div`)."""
    return x.node("floor_div", float(n))


def aligned(x, alignment):
    """``ceil(round(x) / alignment) * alignment``, straight-through (``_ste.aligned``)."""
    return x.node("aligned", float(alignment))


def greater(x, threshold):
    """1.0 where ``x > threshold`` else 0.0, no gradient."""
    if isinstance(x, Value):
        return x.node("greater", float(threshold))
    return ops.stop_gradient(ops.cast(ops.greater(x, threshold), "float32"))


def less(x, threshold):
    """1.0 where ``x < threshold`` else 0.0, no gradient."""
    if isinstance(x, Value):
        return x.node("less", float(threshold))
    return ops.stop_gradient(ops.cast(ops.less(x, threshold), "float32"))


def frozen(x):
    """``x`` as float32 without a gradient."""
    if isinstance(x, Value):
        return x.node("stop")
    return ops.stop_gradient(ops.cast(x, "float32"))


def equal(a, b):
    """1.0 where ``a == b`` else 0.0 (no gradient)."""
    if _number(a) and _number(b):
        return float(a == b)
    if isinstance(a, Value) or isinstance(b, Value):
        tape = (a if isinstance(a, Value) else b).tape
        return as_value(tape, a).node("equal", None, b)
    return ops.cast(ops.equal(frozen(a), frozen(b)), "float32")


def round_(x):
    """``round(x)`` (half to even, as ``keras.ops.round``)."""
    return x.node("round") if isinstance(x, Value) else ops.round(x)


def mod(x, m):
    """``x mod m`` (sign of ``m``, as ``keras.ops.mod``)."""
    return x.node("mod", float(m)) if isinstance(x, Value) else ops.mod(x, m)


def maximum(values):
    """The largest of ``values`` (Values)."""
    values = list(values)
    tape = next(v.tape for v in values if isinstance(v, Value))
    lifted = [as_value(tape, v) for v in values]
    return lifted[0].node("max", None, *lifted[1:])


# ---------------------------------------------------------------------------------- record


def layout_of(counts):
    """What a recording of ``counts`` depends on: per entry ``("number", value)`` (recorded as
    it is), 0 (a scalar tensor: one input) or the length of a vector (one input each)."""
    layout = []
    for c in counts:
        if _number(c):
            layout.append(("number", c))
            continue
        shape = tuple(ops.shape(c))
        if len(shape) > 1:
            raise NotRecordable(f"A count entry of shape {shape} cannot be recorded.")
        layout.append(int(shape[0]) if shape else 0)
    return tuple(layout)


def _leaves(tape, counts, layout):
    """``counts`` with an input node for every tensor entry (a vector: one per element)."""
    out, n = [], 0
    for c, entry in zip(counts, layout):
        if isinstance(entry, tuple):
            out.append(c)
        elif entry == 0:
            out.append(tape.node("input", (), n))
            n += 1
        else:
            out.append([tape.node("input", (), n + j) for j in range(entry)])
            n += entry
    return out


def record(fn, counts):
    """Run ``fn(counts)`` -> ``{name: value}`` once on Values and return its
    :class:`Recording` (which evaluates it for tensor counts of the same layout)."""
    tape = _Tape()
    layout = layout_of(counts)
    values = fn(_leaves(tape, counts, layout))
    outputs = {}
    for name, v in values.items():
        outputs[name] = as_value(tape, v).terms
    return Recording(tape, outputs, layout)


class Recording:
    """The recorded costs, evaluated with vectorised keras ops (see the module docstring).

    The value vector is ``[1, inputs..., stage 1 nodes..., stage 2 nodes..., ...]``. A stage
    evaluates all its nodes' argument polynomials at once, laid out kind by kind (each
    argument position of a kind one contiguous block), then each kind on its block.
    """

    def __init__(self, tape, outputs, layout):
        self.layout = layout
        self.names = list(outputs)
        nodes = tape.nodes
        n_inputs = sum(1 for kind, _, _ in nodes if kind == "input")
        stage = [0] * len(nodes)
        for i, (kind, args, _) in enumerate(nodes):
            if kind != "input":
                stage[i] = 1 + max((stage[f] for a in args for m, _ in a for f in m), default=0)
        position = {}
        for i, (kind, _, param) in enumerate(nodes):
            if kind == "input":
                position[i] = 1 + param
        self.stages = []
        size = 1 + n_inputs
        for s in range(1, max(stage, default=0) + 1):
            by_kind = {}
            for i, (kind, _, _) in enumerate(nodes):
                if stage[i] == s:
                    by_kind.setdefault(kind, []).append(i)
            polys, kinds = [], []
            for kind in sorted(by_kind):
                members = by_kind[kind]
                arity = max(len(nodes[i][1]) for i in members)
                block = len(polys)
                for k in range(arity):  # "max": padded with its first argument
                    polys += [nodes[i][1][k if k < len(nodes[i][1]) else 0] for i in members]
                params = np.array([0.0 if nodes[i][2] is None else nodes[i][2]
                                   for i in members], dtype="float32")
                kinds.append((kind, block, len(members), arity, params))
            table = self._table(polys, position)
            for kind in sorted(by_kind):
                for i in by_kind[kind]:
                    position[i] = size
                    size += 1
            self.stages.append((table, kinds))
        self.output = self._table([outputs[n] for n in self.names], position)

    @staticmethod
    def _table(polys, position):
        """How to evaluate ``polys``: the monomials' factor positions in the value vector
        ``[M, D]`` (padded with the constant), their coefficients and polynomials. (Not
        matmuls with selection matrices: fewer ops in the gradient, but in the flow's steady
        search epochs TensorFlow ran them slower, ~0.05 s per digits epoch.)"""
        rows = [(p, tuple(position[f] for f in m), c) for p, terms in enumerate(polys)
                for m, c in (terms.items() if isinstance(terms, dict) else terms)]
        degree = max((len(f) for _, f, _ in rows), default=1) or 1
        index = np.zeros((len(rows), degree), dtype="int32")
        for r, (_, f, _) in enumerate(rows):
            index[r, :len(f)] = f
        coefficients = np.array([c for _, _, c in rows], dtype="float32")
        segments = np.array([p for p, _, _ in rows], dtype="int32")
        return {"index": index, "coefficients": coefficients, "segments": segments,
                "count": len(polys)}

    @staticmethod
    def _polynomials(v, table):
        count, index = table["count"], table["index"]
        if not count or not len(index):
            return ops.zeros((count,), "float32")
        factors = ops.take(v, index, axis=0)
        terms = factors[:, 0]
        for k in range(1, index.shape[1]):
            terms = terms * factors[:, k]
        return ops.segment_sum(ops.multiply(terms, table["coefficients"]), table["segments"],
                               num_segments=count)

    def inputs(self, counts):
        """The soft counts as one float32 vector (the recorded numbers left out)."""
        parts = []
        for c, entry in zip(counts, self.layout):
            if isinstance(entry, tuple):
                continue
            c = ops.cast(c, "float32")
            parts.append(ops.reshape(c, (1,)) if entry == 0 else c)
        return ops.concatenate([ops.ones((1,), "float32")] + parts, axis=0)

    def __call__(self, counts):
        """``{name: scalar tensor}`` for soft ``counts`` of this recording's layout."""
        v = self.inputs(counts)
        for table, kinds in self.stages:
            args = self._polynomials(v, table)
            results = []
            for kind, block, n, arity, params in kinds:
                x = ops.reshape(ops.slice(args, [block], [n * arity]), (arity, n))
                results.append(_KINDS[kind](x, params))
            v = ops.concatenate([v] + results, axis=0)
        out = self._polynomials(v, self.output)
        return {name: out[k] for k, name in enumerate(self.names)}


def _straight_through(hard, soft):
    # _ste.straight_through's formula (_ste imports this module, not the other way round)
    return soft + ops.stop_gradient(hard - soft)


def _floor_quotient(x, n):
    """``floor(x / n)``, exact wherever ``x`` and the products below are integers under
    2**24. Not ``floor(x / n)`` itself: TensorFlow's graph divides by a constant vector through
    an approximate reciprocal (``48 / 4`` gives 11.999999), where the tensor path's scalar
    division is exact; ``x * (1 / n)`` is exact for powers of two, the correction for any
    ``n``."""
    f = ops.floor(ops.multiply(x, _reciprocal(n)))
    return f + ops.cast(ops.less_equal(ops.multiply(f + 1.0, n), x), "float32") \
        - ops.cast(ops.greater(ops.multiply(f, n), x), "float32")


def _reciprocal(n):
    # in NumPy (correctly rounded): TensorFlow would fold 1 / n into an approximate reciprocal
    return (1.0 / n).astype("float32")


def _ceil_div(x, params):
    return _straight_through(-_floor_quotient(-x[0], params),
                             ops.multiply(x[0], _reciprocal(params)))


def _floor_div(x, params):
    return _straight_through(_floor_quotient(x[0], params),
                             ops.multiply(x[0], _reciprocal(params)))


def _aligned(x, params):
    return _straight_through(ops.multiply(-_floor_quotient(-ops.round(x[0]), params), params),
                             x[0])


#: Node kind -> fn(arguments [arity, nodes], params [nodes]) -> values [nodes].
_KINDS = {
    "id": lambda x, p: x[0],
    "ceil_div": _ceil_div,
    "floor_div": _floor_div,
    "aligned": _aligned,
    "greater": lambda x, p: greater(x[0], p),
    "less": lambda x, p: less(x[0], p),
    "stop": lambda x, p: ops.stop_gradient(x[0]),
    "equal": lambda x, p: equal(x[0], x[1]),
    "round": lambda x, p: ops.round(x[0]),
    "mod": lambda x, p: ops.mod(x[0], p),
    "relu": lambda x, p: ops.relu(x[0]),
    "max": lambda x, p: ops.max(x, axis=0),
}
