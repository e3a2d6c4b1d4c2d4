"""Arena plans better than TFLite Micro's greedy planner, on plain data.

TFLite Micro (TFLM) places buffers with a greedy first-fit in size order (replayed exactly by
`keras_dnas.costs.arena.greedy_plan`). That leaves holes on graphs with branches: on the
MLPerf Tiny MobileNetV1-0.25 its head is a third above the liveness bound. `plan_offsets`
searches for a better layout of the same buffers; `check_offsets` verifies any layout.

Why a search over *placement orders* is enough: place buffers one by one, each at the lowest
offset where it overlaps no already placed buffer whose lifetime meets its own ("first fit").
Take any valid layout and replay it in order of its offsets: by induction every buffer lands
at or below its offset in that layout, so some order reproduces an optimal layout (or a
better one). Repeating the replay until nothing moves gives a layout whose own offset order
reproduces it, so the search may also require offsets (then buffer ids) to increase along
the order: the branch and bound below only extends an order with buffers that land at or
above the last one, and bounds every scope `t` by
`last offset + sizes still to place at t + placed bytes at t above the last offset`.

Search: heuristic orders (largest first, longest lifetime first, ...), a deterministic local
search over the best order, then a depth-first branch and bound with a node limit, started
from the best layout so far. The answer is proven optimal when it reaches the liveness bound
or the search space is exhausted within the limit. It is never worse than the greedy plan:
that plan is the first incumbent.
"""

import random

from keras_dnas._ste import align_up
from keras_dnas.costs.arena import ARENA_ALIGNMENT, greedy_plan, liveness_bound

DEFAULT_MAX_NODES = 50000  # lowest-fit evaluations: a few seconds at most in pure Python
DEFAULT_LOCAL_STEPS = 400


def _normalise(buffers, alignment):
    sizes = [align_up(s, alignment) for s, _, _ in buffers]
    first = [int(f) for _, f, _ in buffers]
    last = [int(l) for _, _, l in buffers]
    for i, (f, l) in enumerate(zip(first, last)):
        if f > l or f < 0:
            raise ValueError(
                f"Buffer {i} has an empty or negative lifetime: first={f}, last={l}. Each "
                "buffer needs 0 <= first <= last (allocation scopes)."
            )
    return sizes, first, last


def _conflicts(first, last):
    n = len(first)
    return [
        [j for j in range(n) if j != i and not (first[j] > last[i] or first[i] > last[j])]
        for i in range(n)
    ]


def _lowest_fit(b, sizes, offsets, conflicts):
    """Lowest offset where buffer `b` overlaps none of its placed, simultaneously live peers."""
    taken = sorted(
        (offsets[p], offsets[p] + sizes[p]) for p in conflicts[b] if offsets[p] is not None
    )
    off = 0
    for start, end in taken:
        if start - off >= sizes[b]:
            break
        off = max(off, end)
    return off


def _place_in_order(order, sizes, conflicts):
    offsets = [None] * len(sizes)
    for b in order:
        offsets[b] = _lowest_fit(b, sizes, offsets, conflicts)
    head = max((offsets[i] + sizes[i] for i in range(len(sizes))), default=0)
    return offsets, head


def check_offsets(buffers, offsets, alignment=ARENA_ALIGNMENT):
    """Verifies an arena layout: returns its head or raises `ValueError` naming the fault.

    A layout is valid when every offset is a non-negative multiple of `alignment` and no two
    buffers whose lifetimes meet share a byte (sizes rounded up to `alignment`, as TFLM does).

    Args:
        buffers: sequence of `(size_bytes, first, last)` (closed allocation-scope lifetimes).
        offsets: one offset (int) per buffer.
        alignment: TFLM's buffer alignment (16).

    Returns:
        The head, max(offset + aligned size) (0 without buffers).

    Example:

    >>> check_offsets([(100, 0, 1), (100, 1, 2), (100, 2, 3)], [0, 112, 0])
    224
    >>> check_offsets([(100, 0, 1), (100, 1, 2)], [0, 96])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Invalid arena plan: buffers 0 and 1 are live together (scopes 0-1 and 1-2) ...
    """
    buffers = list(buffers)
    if len(offsets) != len(buffers):
        raise ValueError(
            f"Invalid arena plan: {len(offsets)} offsets for {len(buffers)} buffers."
        )
    sizes, first, last = _normalise(buffers, alignment)
    for i, off in enumerate(offsets):
        if not isinstance(off, int) or isinstance(off, bool) or off < 0 or off % alignment:
            raise ValueError(
                f"Invalid arena plan: buffer {i} has offset {off!r}; offsets must be "
                f"non-negative integers, multiples of {alignment}."
            )
    conflicts = _conflicts(first, last)
    for i in range(len(sizes)):
        for j in conflicts[i]:
            if j > i and offsets[i] < offsets[j] + sizes[j] and offsets[j] < offsets[i] + sizes[i]:
                raise ValueError(
                    f"Invalid arena plan: buffers {i} and {j} are live together (scopes "
                    f"{first[i]}-{last[i]} and {first[j]}-{last[j]}) but overlap in memory "
                    f"([{offsets[i]}, {offsets[i] + sizes[i]}) and "
                    f"[{offsets[j]}, {offsets[j] + sizes[j]}))."
                )
    return max((offsets[i] + sizes[i] for i in range(len(sizes))), default=0)


def _local_search(order, head, sizes, conflicts, steps, seed):
    """Moves one buffer to another place in the order; keeps moves that do not raise the head."""
    rng = random.Random(seed)
    n = len(order)
    best = list(order)
    for _ in range(steps if n > 1 else 0):
        i, j = rng.randrange(n), rng.randrange(n)
        if i == j:
            continue
        cand = list(best)
        cand.insert(j, cand.pop(i))
        _, h = _place_in_order(cand, sizes, conflicts)
        if h <= head:
            best, head = cand, h
    return best, head


def _branch_and_bound(sizes, first, last, conflicts, incumbent, max_nodes):
    """Depth-first search over canonical placement orders; returns (offsets, head, exhausted)."""
    n = len(sizes)
    lo, hi = min(first), max(last)
    scopes = range(lo, hi + 1)
    live = [[b for b in range(n) if first[b] <= t <= last[b]] for t in scopes]
    remaining = [sum(sizes[b] for b in bs) for bs in live]  # bytes still to place per scope
    best_offsets, best_head = incumbent
    offsets = [None] * n
    state = dict(best=(best_offsets, best_head), nodes=0, cut=False)

    def bound(last_off):
        worst = 0
        for k, bs in enumerate(live):
            above = 0
            for b in bs:
                if offsets[b] is not None:
                    above += max(0, offsets[b] + sizes[b] - max(last_off, offsets[b]))
            worst = max(worst, last_off + remaining[k] + above)
        return worst

    def dfs(placed, last_key, peak):
        if state["nodes"] >= max_nodes:
            state["cut"] = True
            return
        state["nodes"] += n - placed  # work: one lowest-fit evaluation per unplaced buffer
        if placed == n:
            if peak < state["best"][1]:
                state["best"] = (list(offsets), peak)
            return
        cands, seen = [], set()
        for b in range(n):
            if offsets[b] is not None:
                continue
            off = _lowest_fit(b, sizes, offsets, conflicts)
            if (off, b) <= last_key:
                continue  # not the canonical (offset, id) order of the layout it would build
            key = (off, sizes[b], first[b], last[b])
            if key in seen:
                continue  # an identical buffer at the same place: same subtree
            seen.add(key)
            cands.append((off, -sizes[b], b))
        cands.sort()
        for off, _, b in cands:
            new_peak = max(peak, off + sizes[b])
            if new_peak >= state["best"][1]:
                continue
            offsets[b] = off
            for k, t in enumerate(scopes):
                if first[b] <= t <= last[b]:
                    remaining[k] -= sizes[b]
            if bound(off) < state["best"][1]:
                dfs(placed + 1, (off, b), new_peak)
            for k, t in enumerate(scopes):
                if first[b] <= t <= last[b]:
                    remaining[k] += sizes[b]
            offsets[b] = None
            if state["cut"]:
                return

    dfs(0, (-1, -1), 0)
    offs, head = state["best"]
    return offs, head, not state["cut"]


def plan_offsets(buffers, alignment=ARENA_ALIGNMENT, max_nodes=DEFAULT_MAX_NODES,
                 local_steps=DEFAULT_LOCAL_STEPS, seed=0):
    """An arena layout with a head no larger than TFLite Micro's greedy plan, often smaller.

    Deterministic for given arguments. Exact (`optimal=True`) when the head reaches the
    liveness bound or the branch and bound finishes within `max_nodes`.

    Args:
        buffers: sequence of `(size_bytes, first, last)`: closed lifetimes in allocation
            scopes, in TFLM's add order (tensor order, then scratch buffers), as for
            `keras_dnas.costs.arena.greedy_plan`.
        alignment: sizes are rounded up to this (TFLM: 16); offsets are multiples of it.
        max_nodes: work limit of the branch and bound, in lowest-fit evaluations (each node
            evaluates every unplaced buffer); 0: heuristics and local search only.
        local_steps: moves tried by the local search over the best placement order.
        seed: seed of the local search's moves.

    Returns:
        A dict: `offsets` (one per buffer), `head` (bytes), `greedy_head` (TFLM's greedy
        plan of the same buffers), `bound` (liveness lower bound), `optimal` (bool) and
        `method` (`"greedy"`, `"heuristic"`, `"local search"` or `"branch and bound"`: what
        found the layout returned).

    Example:

    >>> # Two long-lived buffers bracket a short one: greedy stacks the large ones first and
    >>> # leaves a hole; the plan reaches the liveness bound.
    >>> p = plan_offsets([(64, 0, 1), (32, 1, 2), (48, 2, 3), (64, 3, 4), (32, 0, 4)])
    >>> p["greedy_head"], p["head"], p["bound"], p["optimal"]
    (176, 144, 144, True)
    """
    buffers = list(buffers)
    sizes, first, last = _normalise(buffers, alignment)
    n = len(sizes)
    greedy_offsets, greedy_head = greedy_plan(list(zip(sizes, first, last)), alignment=1)
    bound = int(liveness_bound(zip(sizes, first, last), alignment=1))
    result = dict(offsets=list(greedy_offsets), head=greedy_head, greedy_head=greedy_head,
                  bound=bound, optimal=greedy_head <= bound, method="greedy")
    if n == 0 or result["optimal"]:
        return result
    conflicts = _conflicts(first, last)
    ids = list(range(n))
    orders = [
        sorted(ids, key=lambda b: (-sizes[b], b)),
        sorted(ids, key=lambda b: (-(last[b] - first[b]), -sizes[b], b)),
        sorted(ids, key=lambda b: (-sizes[b] * (last[b] - first[b] + 1), b)),
        sorted(ids, key=lambda b: (first[b], -sizes[b], b)),
        sorted(ids, key=lambda b: (greedy_offsets[b], b)),
    ]
    best_order, best_head = None, greedy_head
    for order in orders:
        offs, head = _place_in_order(order, sizes, conflicts)
        if head < best_head or best_order is None:
            best_order = order
            if head < best_head:
                best_head = head
                result.update(offsets=offs, head=head, method="heuristic")
    if best_head > bound and local_steps:
        order, head = _local_search(best_order, best_head, sizes, conflicts, local_steps, seed)
        if head < best_head:
            offs, _ = _place_in_order(order, sizes, conflicts)
            best_head = head
            result.update(offsets=offs, head=head, method="local search")
    if best_head <= bound:
        result["optimal"] = True
        return result
    if max_nodes:
        offs, head, exhausted = _branch_and_bound(
            sizes, first, last, conflicts, (result["offsets"], best_head), max_nodes)
        if head < best_head:
            result.update(offsets=offs, head=head, method="branch and bound")
        result["optimal"] = exhausted or head <= bound
    return result


def best_operator_order(n_tensors, ops, inputs, outputs, sizes, scratch=None,
                        alignment=ARENA_ALIGNMENT, max_states=20000):
    """A topological operator order minimising the peak of live buffers (the liveness bound).

    Lifetimes follow TFLite Micro (see `keras_dnas.costs.arena.tensor_lifetimes`): a tensor
    lives from its producer (graph inputs: from the start) to its last consumer (graph
    outputs: to the end); an operator's scratch buffers live during it. Which tensors are live
    after a set of operators has run depends only on that set, so a depth-first search over
    orders can drop any partial order reaching an already seen set with a peak no lower
    (exact), and stops after `max_states` sets (then the best order found is returned).

    Args:
        n_tensors: number of tensors.
        ops: sequence of `(input_ids, output_ids)` in the current order (-1: omitted input).
        inputs: graph input tensor ids.
        outputs: graph output tensor ids.
        sizes: bytes per tensor (0 for tensors that need no arena memory, e.g. constants).
        scratch: optional bytes of scratch per operator.
        alignment: sizes are rounded up to this first.
        max_states: limit on the operator sets visited.

    Returns:
        `(order, peak, current_peak)`: operator indices in the order found, its peak and the
        peak of the current order. Ties keep the current order.

    Example:

    >>> # Branch A makes a big tensor that waits for branch B, whose intermediate is big too:
    >>> # running B first frees its intermediate before A's result exists.
    >>> ops = [([0], [1]), ([0], [2]), ([2], [3]), ([1, 3], [4])]  # a1; b1, b2; join
    >>> best_operator_order(5, ops, [0], [4], [16, 160, 160, 16, 16])
    ([1, 2, 0, 3], 192, 336)
    """
    sizes = [align_up(s, alignment) for s in sizes]
    scratch = [align_up(s, alignment) for s in (scratch or [0] * len(ops))]
    n_ops = len(ops)
    producer = {}
    consumers = [set() for _ in range(n_tensors)]
    for i, (ins, outs) in enumerate(ops):
        for t in outs:
            producer[t] = i
        for t in ins:
            if t >= 0:
                consumers[t].add(i)
    deps = [{producer[t] for t in ins if t >= 0 and t in producer and producer[t] != i}
            for i, (ins, _) in enumerate(ops)]
    keep = set(outputs)

    def peak_of(order):
        done, peak = set(), 0
        alive = {t for t in inputs if sizes[t]}
        for i in order:
            ins, outs = ops[i]
            new = {t for t in outs if sizes[t]}
            peak = max(peak, sum(sizes[t] for t in alive | new) + scratch[i])
            done.add(i)
            alive |= {t for t in new if consumers[t] - done or t in keep}
            alive -= {t for t in ins if t >= 0 and t not in keep and not consumers[t] - done}
        return peak

    current = list(range(n_ops))
    current_peak = peak_of(current)
    best = dict(order=current, peak=current_peak, states=0)
    seen = {}

    def dfs(done, order, alive, peak):
        if peak >= best["peak"] or best["states"] >= max_states:
            return
        key = frozenset(done)
        if seen.get(key, float("inf")) <= peak:
            return
        seen[key] = peak
        best["states"] += 1
        if len(order) == n_ops:
            best.update(order=list(order), peak=peak)
            return
        ready = [i for i in range(n_ops) if i not in done and deps[i] <= done]
        for i in ready:
            ins, outs = ops[i]
            new = {t for t in outs if sizes[t]}
            step = max(peak, sum(sizes[t] for t in alive | new) + scratch[i])
            done.add(i)
            nxt = (alive | {t for t in new if consumers[t] - done or t in keep}) - {
                t for t in ins if t >= 0 and t not in keep and not consumers[t] - done}
            order.append(i)
            dfs(done, order, nxt, step)
            order.pop()
            done.discard(i)

    dfs(set(), [], {t for t in inputs if sizes[t]}, 0)
    return best["order"], best["peak"], current_peak
