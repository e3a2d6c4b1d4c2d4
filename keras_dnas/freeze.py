"""freeze(): rebuild a plain Keras model with the kept channels and sliced weights."""

import contextlib
import functools
import gc
import warnings

import numpy as np

import keras

from keras_dnas import _keras, targets
from keras_dnas._data import CALIBRATION_SAMPLES, calibration_sample, input_arrays
from keras_dnas.graph import walk
from keras_dnas.report.format import fmt_quantity
from keras_dnas.slicing import kept_channels, rebuild_with
from keras_dnas.vocabulary import canonical

L = keras.layers


def project(model, cost_model, budgets, plan=None, keep=None):
    """Remove channels until every budget holds under exact costs.

    Greedy on the least important channel per unit of budget saved. Each
    round measures, with exact costs, what closing one more channel of each
    searchable group saves: ``saved`` = the drop of the summed relative
    violation of the budgets that fail (only those are evaluated: closing
    channels never raises a cost). A channel ``c`` of group ``g`` ranks by
    ``|alpha_c| / saved_g``, groups in increasing ``|alpha|`` order; groups
    of two channels are cut to one only when no wider group is left to cut
    (one-channel layers are bottlenecks). Costs move in steps (16-byte
    aligned arena buffers, SIMD widths), so where one channel saves nothing,
    ``saved_g`` is the saving per channel of closing a quarter of the group.
    Peak RAM is a maximum over time, so even that often leaves it unchanged:
    when no group saves anything, channels close in order of ``|alpha|`` per
    unit of a measure that always shrinks (total planned buffer bytes for
    RAM, the metric itself otherwise), up to the first that lowers the
    violation (found by doubling and bisection on the count).

    Several channels close per round: they are taken in rank order until
    their predicted saving (the sum of their groups' one-channel savings of
    this round, at most half of a group's channels) covers half of the
    remaining violation. If the exact costs of the block save less than 80 %
    of its prediction (the RAM peak moved to another tensor, say), only its
    first half closes (and so on: bisection); if it meets the budgets, only
    its shortest prefix that does closes (bisection). The rounds shrink to a single
    channel near the budget, where the choice is exactly that of closing one
    channel at a time (the first channel of every round is always that
    choice). The exact RAM (a planner replay, the expensive cost) of the
    one-channel trials comes from group testing: closing one channel in
    every group of a set at once, and splitting only the sets that lower
    the arena (only groups live at its peak can), finds the groups that
    lower it with a few replays (a set that lowers it more than its two
    halves do apart is a move of its own: one channel of each of its groups,
    for scopes sharing the peak); the other budgets are evaluated per group.
    From one round to the next the peak moves among the same few scopes, so the groups
    that lowered the arena in the last round are tried first, one by one and together, and
    all the others as one set (split only if it lowers the arena).
    This takes ``O(groups x log(violation / one channel's saving))``
    evaluations of the cheap costs and far fewer replays, instead of
    ``O(groups x channels closed)`` of both. If even one channel per group
    cannot meet the budgets, that is known from one evaluation up front.

    Returns:
        ``(keep, removed, costs)``: the new keep-masks, a list of
        ``(layer, channel)`` closed, and the exact costs after projection.

    Raises:
        ValueError: if the budgets cannot hold even with one channel per group.
    """
    if keep is None:
        plan, keep = kept_channels(model, plan)
    keep = [k.copy() for k in keep]
    metrics = [b.metric for b in budgets]
    owners = {layer.name: layer for layer in walk.functional_of(model).layers}
    theta = {g.id: np.abs(keras.ops.convert_to_numpy(owners[g.leader].dnas_alpha))
             for g in plan.groups if not g.frozen}
    counts = [int(k.sum()) for k in keep]

    def evaluate(c, wanted):
        if not wanted:
            return {}
        values = cost_model.evaluate(c, wanted, exact=True)
        return {m: float(_number(v)) for m, v in values.items()}

    def violation(values, which):
        return sum(b.violation(values[b.metric]) for b in which)

    def ram_drops(groups, step, ram_now, hot=()):
        """Exact RAM drops of closing ``step[g]`` channels, by group testing: closing the steps
        of a whole set at once, and splitting only the sets that lower the arena (only groups
        live at its peak can), so few planner replays are needed. Returns ``({g: drop},
        [(set, drop)])``: single groups that lower it, and sets that lower it more together
        than their halves do apart (scopes sharing the peak, each needing its own group).

        ``hot``: the groups that lowered it in the previous round (alone or in a set). The
        peak moves among the same few scopes from one round to the next, so these are tried
        one by one and as one set, and the others as one set first: about ``len(hot) + 2``
        replays a round instead of a split down to each of them among all the groups."""
        def drop_of(subset):
            trial = list(counts)
            for g in subset:
                trial[g] -= step[g]
            return ram_now - evaluate(trial, ["ram_bytes"])["ram_bytes"]

        found, joint = {}, []
        hot = [g for g in groups if g in hot]
        if hot:
            for g in hot:
                drop = drop_of([g])
                if drop > 0:
                    found[g] = drop
            if len(hot) > 1:
                drop = drop_of(hot)
                if drop > sum(found.values()):  # more together than apart
                    joint.append((tuple(hot), drop))
            groups = [g for g in groups if g not in found and g not in hot]
        todo = [(list(groups), drop_of(groups))] if groups else []
        while todo:
            subset, drop = todo.pop()
            if drop <= 0:
                continue
            if len(subset) == 1:
                found[subset[0]] = drop
                continue
            halves = [subset[:len(subset) // 2], subset[len(subset) // 2:]]
            drops = [drop_of(h) for h in halves]
            if drop > sum(max(d, 0.0) for d in drops):  # more together than apart
                joint.append((tuple(subset), drop))
            todo += [(h, d) for h, d in zip(halves, drops) if d > 0]
        return found, joint

    removed = []
    hot_groups = {True: set(), False: set()}  # groups whose step lowered the arena last time
    costs = evaluate(counts, metrics)
    if violation(costs, budgets) > 0:
        # costs only fall as channels close (taps stay as they are: the group counts only)
        least = evaluate(cost_model.min_counts()[:len(plan.groups)], metrics)
        if violation(least, budgets) > 0:
            from keras_dnas.report.floor import describe_floor

            raise ValueError("Budgets cannot hold even with one channel per group. "
                             "What sets the floor (loosen the budget, or change / exclude "
                             "the largest layers):\n"
                             + describe_floor(cost_model, budgets,
                                              cost_model.min_counts()[:len(plan.groups)]))
    while violation(costs, budgets) > 0:
        failing = [b for b in budgets if not b.holds(costs[b.metric])]
        wanted = [b.metric for b in failing]
        cheap = [m for m in wanted if m != "ram_bytes"]
        ram_failing = "ram_bytes" in wanted
        now = violation(costs, failing)
        floor = 2 if any(counts[g] > 2 for g in theta) else 1
        groups = [g for g in theta if counts[g] > floor]
        if not groups:
            from keras_dnas.report.floor import describe_floor

            raise ValueError("Budgets cannot hold even with one channel per group. "
                             "What sets the floor (loosen the budget, or change / exclude "
                             "the largest layers):\n"
                             + describe_floor(cost_model, budgets, counts))

        joint = []

        def trial_savings(step):
            """Violation saved per channel by closing ``step[g]`` channels of each group g."""
            values = {}
            for g in step:
                trial = list(counts)
                trial[g] -= step[g]
                values[g] = evaluate(trial, cheap)
            if ram_failing:
                unit = all(v == 1 for v in step.values())
                hot = hot_groups[unit]  # one channel each, or a quarter of each group
                drops, together = ram_drops(list(step), step, costs["ram_bytes"], hot)
                hot.clear()
                hot.update(drops)
                hot.update(g for subset, _ in together for g in subset)
                for g in step:
                    values[g]["ram_bytes"] = costs["ram_bytes"] - drops.get(g, 0.0)
                if all(v == 1 for v in step.values()):
                    for subset, drop in together:
                        t = {m: costs[m] - sum(costs[m] - values[g][m] for g in subset)
                             for m in cheap}
                        t["ram_bytes"] = costs["ram_bytes"] - drop
                        joint.append((subset, now - violation(t, failing)))
            return values, {g: (now - violation(values[g], failing)) / step[g] for g in step}

        one, saved = trial_savings({g: 1 for g in groups})
        # costs in steps (16-byte aligned buffers, SIMD widths): one channel may save nothing
        # where a few do; use the saving per channel of closing a quarter of the group
        steps = {g: min(counts[g] - floor, max(2, counts[g] // 4)) for g in groups
                 if saved[g] <= 0 and counts[g] - floor > 1}
        if steps and not joint:
            saved.update({g: v for g, v in trial_savings(steps)[1].items() if v > 0})
        # the channels each group would close next, least important first
        order = {g: np.flatnonzero(keep[g])[np.argsort(theta[g][keep[g]], kind="stable")]
                 for g in saved}
        useful = [g for g in saved if saved[g] > 0]
        if useful or joint:
            # moves: one channel of a group, or one channel of each group of a set that lowers
            # the arena only together; ranked by the |alpha| they close per violation saved
            # (arrays of the one-channel moves, in the order listed: thousands on a large
            # network, of which the block takes the first few; a stable sort keeps ties in it)
            caps = [max(1, min(counts[g] - floor, counts[g] // 2)) for g in useful]
            single_c = [order[g][:cap] for g, cap in zip(useful, caps)]
            keys = [(theta[g][cs] + 1e-9) / saved[g] for g, cs in zip(useful, single_c)]
            single_g = np.repeat(np.array(useful, dtype=np.int64), [len(cs) for cs in single_c])
            single_c = np.concatenate(single_c) if useful else np.zeros(0, dtype=np.int64)
            together = []
            for subset, gain in joint:
                if gain > 0:
                    cost = sum(theta[g][order[g][0]] for g in subset) + 1e-9
                    keys.append(np.array([cost / gain]))
                    together.append(([(g, int(order[g][0])) for g in subset], gain))

            def moves():
                ranked = np.argsort(np.concatenate(keys).astype(np.float64), kind="stable") \
                    if keys else []
                for i in ranked:
                    if i < len(single_g):
                        g = int(single_g[i])
                        yield [(g, int(single_c[i]))], saved[g]
                    else:
                        yield together[i - len(single_g)]

            chosen, gains, total, seen = [], [], 0.0, set()
            for channels, gain in moves():
                fresh = [gc for gc in channels if gc not in seen]
                seen.update(fresh)
                chosen += fresh
                gains += [gain / len(channels)] * len(fresh)
                total += gain
                if total >= 0.5 * now:
                    break
            useful = useful or [g for subset, _ in joint for g in subset]
        else:
            # No group saves anything (the RAM peak sits on a plateau): close channels in order
            # of |alpha| per unit of a measure that always shrinks (total planned buffer bytes
            # for RAM, the metric itself otherwise), as the one-at-a-time rule would, and stop
            # at the first prefix that lowers the violation (found by doubling, then bisection).
            mass_now = float(cost_model.memory.ram_mass(counts)) if ram_failing else None
            shrink = {}
            for g in saved:
                trial = list(counts)
                trial[g] -= 1
                shrink[g] = max(1e-12, sum(
                    ((mass_now - float(cost_model.memory.ram_mass(trial))) if b.metric == "ram_bytes"
                     else (costs[b.metric] - one[g][b.metric])) / b.limit for b in failing))
            chosen = [(g, int(c)) for _, g, c in sorted(
                ((theta[g][c] + 1e-9) / shrink[g], g, int(c)) for g in saved
                for c in order[g][:max(1, min(counts[g] - floor, counts[g] // 2))])]
        tried = {}

        def closing(k):
            if k not in tried:
                trial = list(counts)
                for g, _ in chosen[:k]:
                    trial[g] -= 1
                tried[k] = (trial, evaluate(trial, metrics))
            return tried[k]

        if useful:
            # Bisection on the block: a prediction from one-channel savings fails when the peak
            # moves (RAM) or a layer's cost bends; then only the first half of the block closes.
            predicted = np.cumsum(gains)
            k = len(chosen)
            while k > 1 and now - violation(closing(k)[1], failing) < 0.8 * predicted[k - 1]:
                k //= 2
            if k > 1 and violation(closing(k)[1], failing) == 0:
                lo, hi = 0, k  # the budgets hold: close no more than the shortest prefix needs
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if violation(closing(mid)[1], failing) == 0:
                        hi = mid
                    else:
                        lo = mid
                k = hi
        else:
            hi = 1
            while hi < len(chosen) and violation(closing(hi)[1], failing) >= now:
                hi = min(2 * hi, len(chosen))
            lo = hi // 2  # closing lo channels does not lower the violation (or lo == 0)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if violation(closing(mid)[1], failing) < now:
                    hi = mid
                else:
                    lo = mid
            k = hi
        trial, t_costs = closing(k)
        for g, c in chosen[:k]:
            keep[g] = keep[g].copy()
            keep[g][c] = False
            removed.append((plan.groups[g].leader, c))
        counts, costs = trial, t_costs
    return keep, removed, costs


def grow(model, cost_model, budgets, plan=None, keep=None):
    """Reopen closed channels while every budget still holds (exact costs).

    A search stops closing channels once the budgets hold, but its penalty
    usually overshoots and leaves budget unused; this spends it, in three
    steps, each the largest that keeps every budget: a uniform floor (every
    group keeps at least a fraction ``f`` of its channels, which lifts groups
    the search starved), then the allocation scaled up by a common factor,
    then single channels, each time the one that costs least (summed
    relative increase of the budgeted metrics), until no channel fits. To
    keep that fast on thousands of channels, one exact evaluation of every
    group's next channel ranks them and several channels are added per
    round, cheapest first, while their summed cost stays within half of
    the budget left (at most half of a group's closed channels); if the
    exact costs of the block break a budget, only its first half is added
    (bisection). The first channel of every round, and every channel near
    the limit, is the one-at-a-time choice. The arena rise of each group's
    next channel comes from group testing (opening a channel in every group
    of a set at once; only sets that raise the arena are split), so few
    planner replays are needed; a group whose next channel breaks another
    budget is not tried again (those costs only grow). Inside a group,
    closed channels reopen in order of decreasing ``|alpha|``. Only budgets
    limit the growth, so pass every limit that matters.

    Returns:
        ``(keep, added, costs)``: the new keep-masks, a list of
        ``(layer, channel)`` reopened, and the exact costs after growing.
    """
    if keep is None:
        plan, keep = kept_channels(model, plan)
    keep = [k.copy() for k in keep]
    initial = [k.copy() for k in keep]
    metrics = [b.metric for b in budgets]
    owners = {layer.name: layer for layer in walk.functional_of(model).layers}
    order, base = {}, {}
    for g in plan.groups:
        if g.frozen:
            continue
        th = np.abs(keras.ops.convert_to_numpy(owners[g.leader].dnas_alpha))
        # open channels first (they stay open), then closed ones by decreasing |alpha|
        order[g.id] = np.lexsort((-th, ~keep[g.id]))
        base[g.id] = int(keep[g.id].sum())

    def evaluate(k):
        values = cost_model.evaluate([int(x.sum()) for x in k], metrics, exact=True)
        return {m: float(_number(v)) for m, v in values.items()}

    def holds(values):
        return all(b.holds(values[b.metric]) for b in budgets)

    def with_counts(counts):
        trial = list(keep)
        for g, n in counts.items():
            trial[g] = np.zeros_like(keep[g])
            trial[g][order[g][:n]] = True
        return trial

    def largest(counts_at, lo, hi):
        """The counts at the largest f in [lo, hi] whose exact costs hold (bisection)."""
        best = None
        top = counts_at(hi)
        top_costs = evaluate(top)
        if holds(top_costs):
            return top, top_costs
        for _ in range(20):
            if hi - lo < 1e-3:
                break
            mid = 0.5 * (lo + hi)
            t = counts_at(mid)
            t_costs = evaluate(t)
            if holds(t_costs):
                lo, best = mid, (t, t_costs)
            else:
                hi = mid
        return best

    costs = evaluate(keep)
    if not order or not holds(costs):
        return keep, [], costs
    # 1. a uniform floor: every group keeps at least a fraction f of its channels (lifts the
    #    groups the search starved first: a one-channel stream throttles the whole network)
    size = {g: plan.groups[g].size for g in base}
    found = largest(lambda f: with_counts({g: max(n, int(np.floor(f * size[g] + 1e-9)))
                                           for g, n in base.items()}), 0.0, 1.0)
    if found is not None:
        keep, costs = found
    # 2. the search's allocation scaled up by a common factor
    now = {g: int(keep[g].sum()) for g in base}
    found = largest(lambda f: with_counts({g: min(size[g], max(n, int(np.floor(n * f + 1e-9))))
                                           for g, n in now.items()}),
                    1.0, max(size[g] / max(n, 1) for g, n in now.items()))
    if found is not None:
        keep, costs = found
    # 3. single channels, cheapest first, several per exact evaluation (see the docstring)
    cheap = [b for b in budgets if b.metric != "ram_bytes"]
    ram = next((b for b in budgets if b.metric == "ram_bytes"), None)
    raising = set()  # groups whose next channel raised the arena last round
    full = set()  # groups whose next channel breaks a budget other than RAM: these costs only
    while True:   # grow with channels, so such a group never fits again
        # opening the next channel of group g (keep[g] follows order[g]) adds 1 to its count
        counts = _counts(keep)
        open_ = [g for g in order if counts[g] < plan.groups[g].size and g not in full]
        trials = {}
        for g in open_:
            t_costs = dict(costs)
            if cheap:
                values = cost_model.evaluate(_plus_one(counts, [g]),
                                             [b.metric for b in cheap], exact=True)
                t_costs.update({m: float(_number(v)) for m, v in values.items()})
                if not all(b.holds(t_costs[b.metric]) for b in cheap):
                    full.add(g)
                    continue
            trials[g] = t_costs
        if ram is not None and trials:
            rises = _ram_rises(cost_model, counts, list(trials), costs["ram_bytes"],
                               hot=raising)
            raising = set(rises)
            for g, rise in rises.items():
                trials[g]["ram_bytes"] = costs["ram_bytes"] + rise
        cands = []
        for g, t_costs in trials.items():
            if not holds(t_costs):
                continue
            rise = {b.metric: t_costs[b.metric] - costs[b.metric] for b in budgets}
            rank = sum(rise[b.metric] / b.limit for b in budgets)
            cands.append((rank, g, rise, plan.groups[g].size - counts[g]))
        if not cands:
            break
        cands.sort(key=lambda c: c[0])
        room = {b.metric: b.limit - costs[b.metric] for b in budgets}
        block, used = [], {m: 0.0 for m in room}
        for rank, g, rise, closed in cands:
            for _ in range(max(1, closed // 2)):
                if block and any(used[m] + rise[m] > 0.5 * room[m] for m in room):
                    break
                block.append(g)
                for m in room:
                    used[m] += rise[m]
        k = len(block)
        while True:  # bisection on the block
            now = {g: counts[g] for g in set(block[:k])}
            for g in block[:k]:
                now[g] += 1
            trial = with_counts(now)
            t_costs = evaluate(trial)
            if holds(t_costs) or k == 1:
                break
            k //= 2
        if not holds(t_costs):  # the first channel alone breaks the RAM budget after all
            full.add(block[0])
            continue
        keep, costs = trial, t_costs
    added = [(plan.groups[g].leader, int(c)) for g in order
             for c in np.flatnonzero(keep[g] & ~initial[g])]
    return keep, added, costs


def _counts(keep):
    return [int(k.sum()) for k in keep]


def _plus_one(counts, groups):
    """``counts`` with one more channel in each of ``groups``."""
    trial = list(counts)
    for g in groups:
        trial[g] += 1
    return trial


def _ram_rises(cost_model, counts, groups, ram_now, hot=()):
    """``{g: exact arena rise}`` of opening one more channel in group g (from ``counts``, one
    per group), by group testing: opening one channel in every group of a set at once and
    splitting only the sets that raise the arena (groups off its peak leave it as it is), so
    few planner replays are needed.
    ``hot``: the groups that raised it last round (the peak stays among the same few scopes),
    tried one by one first; the others start as one set."""
    def rise_of(subset):
        trial = _plus_one(counts, subset)
        return float(_number(cost_model.evaluate(trial, ["ram_bytes"])["ram_bytes"])) - ram_now

    hot = [g for g in groups if g in hot]
    found = {}
    for g in hot:
        rise = rise_of([g])
        if rise > 0:
            found[g] = rise
    rest = [g for g in groups if g not in hot]
    stack = [rest] if rest else []
    while stack:
        subset = stack.pop()
        rise = rise_of(subset)
        if rise <= 0:
            continue
        if len(subset) == 1:
            found[subset[0]] = rise
        else:
            stack += [subset[len(subset) // 2:], subset[:len(subset) // 2]]
    return found


def _number(v):
    return np.asarray(keras.ops.convert_to_numpy(v)).item() if not isinstance(v, (int, float)) \
        else v


def freeze(model, target=None, budgets=None, memory=None, fill=True, verbose=1,
           calibration_data=None, compile=True, arena_plan=None):
    """A plain Keras model with only the channels the masks keep.

    Conv/Dense filters shrink to the kept channels; kernels, biases, BN
    statistics and depthwise kernels are sliced, including Dense layers after
    Flatten (tiled masks), concatenations and residual adds. The result uses
    standard Keras layers only (loads without custom objects) and computes
    the same outputs as ``model`` in inference mode. ``model`` is not modified.
    Choice blocks (``kd.layers.Choice``) keep only their argmax alternative, inlined (an
    identity alternative leaves no layer); budgets are certified on that model. When that
    structure cannot meet the budgets even at one channel per group (its fixed flash alone,
    say: a separable block is two operators), blocks fall back to their ``reference`` (the
    seed's own block) or else to an identity alternative, with a warning, until one channel
    per group fits; ``certificate["choices_fallback"]`` lists them (TFLite Micro's arena
    layout only).

    With ``target`` and ``budgets`` it also certifies each budget with the
    exact costs (TFLite Micro planner replay for RAM, flash model for flash);
    if one is exceeded it first closes the channels that cost least per unit
    of budget saved (see :func:`project`) and reports what it removed. With
    ``fill`` (the default) it then reopens closed channels while every budget
    still holds (see :func:`grow`): a search usually overshoots, and unused
    budget is accuracy left on the table. Reopened channels keep the weights
    they had when the search closed them: fine-tune the frozen model. The
    certificate is ``frozen.dnas_certificate``.

    After a search with :class:`~keras_dnas.DNASCallback`, what is not given
    is taken from the callback (``model.dnas_search``): its target, its
    budgets (the target's flash and RAM if it had none), its flash/RAM model
    and its ``calibration_data``. Explicit arguments win; ``budgets={}``
    freezes without certifying.

    Closing (and reopening) channels changes what every later
    BatchNormalization normalises, so with calibration data the frozen
    model's BN statistics are set exactly on it
    (:func:`recalibrate_batchnorm`); without, a warning says so.

    With ``compile`` (the default) and a compiled ``model``, the frozen model
    is compiled as ``model`` was (``model.get_compile_config()``: the same
    loss, metrics and compile options, and a fresh optimizer of the same
    class and configuration, e.g. the same learning rate), ready for
    ``evaluate`` or fine-tuning with ``fit``.

    Args:
        model: a searchable model (from ``kd.prepare`` or built from
            ``kd.layers.Masked*``).
        target: a :class:`~keras_dnas.targets.HardwareTarget` or its name
            (default: the search's).
        budgets: ``{metric: limit}`` (see ``kd.DNASCallback``; default: the
            search's; ``{}``: none).
        memory: flash/RAM model (built from ``model`` when needed).
        fill: with ``budgets``, reopen channels into the budget the search
            left unused; ``False`` keeps exactly the channels the masks keep
            (except those projection must remove).
        verbose: print the certificate.
        calibration_data: training inputs (no labels) to set BatchNormalization
            statistics; at most 2,048 of them (a fixed-seed random subset)
            are used. Default: the search's ``calibration_data``.
        compile: compile the frozen model as ``model`` is compiled.
        arena_plan: ``"tflm"`` certifies RAM against TFLite Micro's own arena layout,
            ``"offline"`` against the plan ``kd.export.to_tflite(..., arena_plan="offline")``
            writes into the file. Default: the search's, else ``"tflm"``.

    Returns:
        A plain functional ``keras.Model``.

    Searched kernel taps (PIT's time axis) stay as searched, except when the converted
    file shows that the shorter kernels' explicit padding (not priced by the flash model)
    cannot fit by closing channels: then those layers keep their full kernels, with a
    warning, and ``certificate["taps_reopened"]`` names them.

    Raises:
        ValueError: if the budgets cannot hold with one channel per group.

    Example:

    >>> import numpy as np, keras, keras_dnas as kd
    >>> x = keras.Input((8,))
    >>> h = keras.layers.Dense(6, name="hidden")(x)
    >>> s = kd.prepare(keras.Model(x, keras.layers.Dense(2)(h)))
    >>> _ = s.get_layer("hidden").dnas_alpha.assign([1, 0, 1, 0, 1, 0])
    >>> s.compile(keras.optimizers.Adam(3e-4), "mse", metrics=["mae"])
    >>> slim = kd.freeze(s)
    >>> slim.get_layer("hidden").units
    3
    >>> round(float(slim.optimizer.learning_rate), 6), slim.optimizer is s.optimizer
    (0.0003, False)
    """
    from keras_dnas.prepare import collapse

    search = getattr(model, "dnas_search", None) or {}
    searched = model
    model = collapse(model)  # Choice blocks: the argmax alternative only
    supernet_memory = None
    if model is not searched:
        supernet_memory = search.get("memory")
        search = {k: v for k, v in search.items() if k != "memory"}  # the supernet's
    searched_target = search.get("target")
    # resolved first: a misspelt name fails here, and "STM32H743" is the search's target
    target = targets.get(target) if target is not None else searched_target
    budgets = budgets if budgets is not None else search.get("budgets")
    if budgets:  # an old metric spelling ("ram") warns here, once
        budgets = {canonical(m): b for m, b in budgets.items()}
    same_target = target is not None and searched_target is not None \
        and _target_name(target) == _target_name(searched_target)
    if memory is None and same_target:
        memory = search.get("memory")  # same architecture, same target: reuse
    arena_plan = arena_plan or search.get("arena_plan") or "tflm"
    if arena_plan == "tflm" and memory is not None and hasattr(memory, "base"):
        memory = memory.base  # the search budgeted an offline plan; certify TFLM's own
    if calibration_data is not None:
        calibration_data = calibration_sample(calibration_data, CALIBRATION_SAMPLES,
                                              names=[t.name for t in searched.inputs])
    else:
        calibration_data = search.get("calibration_data")
    swapped = []
    if budgets and model is not searched and target is not None and arena_plan == "tflm":
        # the supernet's exact memory models were built for the search's target (pointer size)
        model, memory, swapped = _fall_back_choices(
            searched, model, target, budgets, memory, supernet_memory if same_target else None)
    plan, keep = kept_channels(model)
    closed = any(not k.all() for k in keep)
    certificate, full_taps, frozen = None, False, None
    if budgets:
        from keras_dnas.export import offline

        offline.check_arena_plan(arena_plan)
        if arena_plan == "offline" and memory is None and target is not None and set(
                budgets) & {"flash_bytes", "ram_bytes"}:
            from keras_dnas import memory as memory_lib

            memory = memory_lib.MemoryModel.from_model(model, plan, target=target)
        memory = offline.memory_for(memory, arena_plan)
        # no automatic collection while certifying: the rebuild and the conversion make enough
        # objects to start full collections of the whole process; the converter's own full
        # collection at its end (see export.convert) frees what they leave
        with _collector_paused():
            try:
                keep, certificate, frozen = _certify(model, plan, keep, target, budgets,
                                                     memory, fill, verbose)
            except _ShortTapsOverBudget as error:
                # the shorter kernels' explicit padding costs flash the search's flash model
                # does not count; the full kernels (the seed's structure) are what the model
                # prices exactly, so certify those rather than give up after a whole search
                warnings.warn(str(error), stacklevel=2)
                full_taps = True
                keep, certificate, frozen = _certify(model, plan, keep, target, budgets,
                                                     memory, fill, verbose, full_taps=True)
                certificate["taps_reopened"] = error.layers
    if frozen is None:  # else: the model the certificate converted, rebuilt once only
        frozen = rebuild_with(model, plan, keep, full_taps=full_taps)
    if certificate is not None:
        if swapped:
            certificate["choices_fallback"] = swapped
        object.__setattr__(frozen, "dnas_certificate", certificate)
    added = len(certificate["added_channels"]) if certificate else 0
    changed = closed or any(not k.all() for k in keep)
    has_bn = any(isinstance(layer, L.BatchNormalization)
                 for layer in walk.functional_of(frozen).layers)
    if has_bn and calibration_data is not None:
        count = recalibrate_batchnorm(frozen, calibration_data)
        if verbose:
            print(f"keras_dnas.freeze: BatchNormalization statistics of {count} layer(s) set "
                  f"on {len(calibration_data[0]):,} calibration samples")
    elif has_bn and changed:
        warnings.warn(
            "keras_dnas.freeze: closing channels changed what the BatchNormalization layers "
            "normalise, and the frozen model keeps the searched network's moving statistics. "
            "Pass calibration_data=x_train (to kd.freeze or kd.DNASCallback) to set them "
            "exactly, or call kd.recalibrate_batchnorm(frozen, x_train).", stacklevel=2)
    elif added:
        warnings.warn(
            f"keras_dnas.freeze reopened {added} channel(s) the search had closed (fill=True) "
            "with the weights they had when closed, so the frozen model does not compute what "
            "the searched one did. Fine-tune it before evaluating or converting it (or pass "
            "fill=False).", stacklevel=2)
    if compile and getattr(searched, "compiled", False):
        _compile_like(frozen, searched)
    return frozen


def _fall_back_choices(searched, model, target, budgets, memory, supernet_memory):
    """``(model, memory, swapped)``: ``model`` itself when the argmax structure can meet the
    budgets at one channel per group (or when no fallback can), else the structure with other
    alternatives in the Choice blocks whose chosen one leaves them out of reach; ``memory``
    the flash / RAM model of the structure returned, built here once for certification to
    reuse (None when no budget needs one).

    A block falls back to its ``reference`` (the seed's own block: trained, and what the
    warm-up distilled) first, else to an identity alternative; each round takes the swap that
    lowers the floor's violation most (a fitting floor: the most slack), until the floor fits.
    The result is certified like any other structure. ``swapped``: ``[{"block", "chosen",
    "kept"}]``."""
    from keras_dnas.costs.model import CostModel
    from keras_dnas.graph.counts import tap_owners
    from keras_dnas.layers.masked import plain_class
    from keras_dnas.prepare import collapse
    from keras_dnas.search.objectives import budget_list

    budgets = budget_list(budgets)
    metrics = [b.metric for b in budgets]
    plan = searched.dnas_plan
    layers = {layer.name: layer for layer in walk.functional_of(searched).layers}
    pointer_bytes = getattr(memory, "pointer_bytes", None)

    def floor(config, kept=None, mem=None):
        """(violation, -slack) of the structure keeping ``config`` at one channel per group."""
        kept = kept if kept is not None else collapse(searched, config)
        kplan = kept.dnas_plan
        if mem is None and set(metrics) & {"flash_bytes", "ram_bytes"}:
            if hasattr(supernet_memory, "exact_memory"):  # cached by the search's model
                mem = supernet_memory.exact_memory(config)[0]
            else:
                from keras_dnas import memory as memory_lib

                mem = memory_lib.MemoryModel.from_model(kept, kplan, target=target,
                                                        pointer_bytes=pointer_bytes)
        cost_model = CostModel(kplan, target, memory=mem, taps=[
            t.dnas_tap_count(exact=True) for t in tap_owners(kept, kplan)])
        least = cost_model.evaluate(cost_model.min_counts()[:len(kplan.groups)], metrics,
                                    exact=True)
        values = {m: float(_number(v)) for m, v in least.items()}
        return (sum(b.violation(values[b.metric]) for b in budgets),
                -min(1.0 - values[b.metric] / b.limit for b in budgets), kept, mem)

    config = [layers[b["name"]].chosen() for b in plan.choices]
    now = floor(config, model, memory)
    if now[0] <= 0:
        return model, now[3], []
    fallbacks = []  # per block: the reference, then identity alternatives
    for b in plan.choices:
        ref = layers[b["name"]].reference
        ident = [j for j, names in enumerate(b["alternatives"]) if len(names) == 1
                 and plain_class(layers[names[0]]) is L.Identity]
        fallbacks.append([[ref] if ref is not None else [], ident])
    original, argmax = list(config), now
    for tier in (0, 1):
        while now[0] > 0:
            best = None
            for i, options in enumerate(fallbacks):
                for j in options[tier]:
                    if j == config[i]:
                        continue
                    trial = config[:i] + [j] + config[i + 1:]
                    found = floor(trial)
                    if best is None or found[:2] < best[0][:2]:
                        best = (found, i, j)
            if best is None or best[0][0] >= now[0]:
                break
            now, i, j = best
            config[i] = j
    if now[0] > 0:  # nothing fits: certification reports the argmax structure's floor
        return model, argmax[3], []
    swapped = [{"block": b["name"], "chosen": old, "kept": new}
               for b, old, new in zip(plan.choices, original, config) if old != new]
    warnings.warn("keras_dnas.freeze: the chosen alternatives cannot meet the budgets at any "
                  "width; fell back to " + ", ".join(
                      f"alternative {s['kept']} of '{s['block']}' (chosen: {s['chosen']})"
                      for s in swapped) + ". Fine-tune the frozen model.", stacklevel=3)
    return now[2], now[3], swapped


def _target_name(target):
    return target if isinstance(target, str) else getattr(target, "name", None)


def _compile_like(frozen, model):
    """Compile ``frozen`` as ``model`` is: same loss, metrics, options; a fresh optimizer."""
    try:
        frozen.compile_from_config(model.get_compile_config())
    except Exception as error:  # e.g. a custom loss not registered for deserialization
        warnings.warn(f"keras_dnas.freeze could not compile the frozen model as the searched "
                      f"one ({type(error).__name__}: {error}); compile it before evaluate or "
                      "fit.", stacklevel=3)


@contextlib.contextmanager
def _collector_paused():
    """No automatic garbage collection inside the block (explicit ``gc.collect`` still runs);
    left as it was on exit."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _ShortTapsOverBudget(ValueError):
    """The searched (shorter) kernels cannot meet the flash / RAM budgets on the converted file."""

    def __init__(self, message, layers):
        super().__init__(message)
        self.layers = layers


def _certify(model, plan, keep, target, budgets, memory, fill, verbose, full_taps=False):
    from keras_dnas.costs.model import CostModel
    from keras_dnas.search.objectives import METRICS, budget_list

    if target is None:
        raise ValueError("freeze(..., budgets=...) needs target= to evaluate the budgets.")
    budgets = budget_list(budgets)
    if memory is None and {b.metric for b in budgets} & {"flash_bytes", "ram_bytes"}:
        from keras_dnas import memory as memory_lib

        memory = memory_lib.MemoryModel.from_model(model, plan, target=target)
    from keras_dnas.graph.counts import tap_owners

    # the taps stay as searched (or all open, ``full_taps``): projection and growth change
    # channels only
    cost_model = CostModel(plan, target, memory=memory, taps=None if full_taps else
                           [t.dnas_tap_count(exact=True) for t in tap_owners(model, plan)])
    keep, removed, costs = project(model, cost_model, budgets, plan=plan, keep=keep)
    keep, removed, costs = list(keep), list(removed), dict(costs)
    added = []
    if fill:
        keep, added, costs = grow(model, cost_model, budgets, plan=plan, keep=keep)
    flash_source, frozen = None, None
    # frozen taps may add PAD / slice operators the search-time model does not have: their
    # flash and arena are certified on the conversion
    if "flash_bytes" in costs or (plan.tap_layers() and "ram_bytes" in costs):
        keep, costs, more, flash_source, frozen = _verify_flash(
            model, plan, keep, costs, budgets, cost_model, full_taps=full_taps)
        removed += more
        added = [a for a in added if keep[_group_of(plan, a[0])][a[1]]]
    rows = [{"metric": b.metric, "limit": b.limit, "value": costs[b.metric],
             "unit": METRICS[b.metric], "holds": b.holds(costs[b.metric])} for b in budgets]
    certificate = {"target": cost_model.target.name, "budgets": rows,
                   "target_config": cost_model.target.to_dict(),
                   "removed_channels": [{"layer": n, "channel": c} for n, c in removed],
                   "added_channels": [{"layer": n, "channel": c} for n, c in added],
                   "all_hold": all(r["holds"] for r in rows)}
    if flash_source:
        certificate["flash_source"] = flash_source
        if flash_source.startswith("int8") and "ram_bytes" in costs and \
                getattr(cost_model.memory, "pointer_bytes", None):
            certificate["ram_source"] = ("TFLite Micro planner replay of the frozen model's "
                                         "int8 conversion")
    if verbose:
        if removed:
            print(f"keras_dnas.freeze: closed {len(removed)} more channel(s) to meet the budgets: "
                  + ", ".join(f"{n}[{c}]" for n, c in removed[:12])
                  + (" ..." if len(removed) > 12 else ""))
        if added:
            print(f"keras_dnas.freeze: reopened {len(added)} channel(s) into the unused budget: "
                  + ", ".join(f"{n}[{c}]" for n, c in added[:12])
                  + (" ..." if len(added) > 12 else ""))
        for r in rows:
            print(f"  {r['metric']:>14}: {fmt_quantity(r['value'], r['unit']):>16} <= "
                  f"{fmt_quantity(r['limit'], r['unit']):>16}  "
                  f"{'OK' if r['holds'] else 'EXCEEDED'}")
    return keep, certificate, frozen


def _group_of(plan, leader):
    return next(g.id for g in plan.groups if g.leader == leader)


def _verify_flash(model, plan, keep, costs, budgets, cost_model, attempts=4, full_taps=False):
    """Certify flash, and RAM from the same file, by converting the frozen model (int8, as
    ``kd.export.to_tflite``).

    The flash model is within a few bytes of the converter, and a budget
    filled to the limit is exactly where a few bytes matter. The size of the
    flatbuffer does not depend on the calibration data (random inputs here).
    The conversion is made anyway for flash, so a RAM budget is certified on it
    too: TFLite Micro's planner replayed on the frozen model's own flatbuffer
    (the search-time model rescales the full-width conversion, which is an
    estimate where the converter emits another graph at small widths). If a
    value exceeds its limit, projection runs again with the limit tightened by
    the excess. If no channels can absorb an excess while taps are closed (the shorter
    kernels' explicit padding, which the flash model does not price, see
    ``slicing.rebuild_with``), raises ``_ShortTapsOverBudget``: ``freeze`` then certifies the
    full kernels. Returns ``(keep, costs, removed, source, frozen)``: ``frozen`` is the model
    rebuilt with ``keep``, the one converted (``freeze`` returns it: no second rebuild).
    """
    from keras_dnas.costs import arena
    from keras_dnas.export.convert import _to_tflite_decoded
    from keras_dnas.search.objectives import Budget

    frozen = rebuild_with(model, plan, keep, full_taps=full_taps)
    shape = tuple(frozen.inputs[0].shape[1:])
    if len(frozen.inputs) != 1 or any(d is None for d in shape):
        return keep, costs, [], "flash model (input shape not fixed: not converted)", frozen
    pointer_bytes = getattr(cost_model.memory, "pointer_bytes", None)
    metrics = ["flash_bytes"] + (["ram_bytes"] if "ram_bytes" in costs and pointer_bytes else [])
    # the file that ships: with an offline arena plan it carries the plan's metadata (more
    # flash) and TFLite Micro uses its offsets (less RAM), so certify that file, not TFLM's
    arena_plan = getattr(cost_model.memory, "arena_plan", "tflm")
    checked = [b for b in budgets if b.metric in metrics]
    from keras_dnas.memory import representative_inputs

    x = representative_inputs(frozen)  # the memory model's: the same samples

    def measured(frozen):
        # the file kd.export.to_tflite writes, and its decoding (read once), as trained
        with _zero_biases_as_trained(frozen) as zero:
            blob, info = _to_tflite_decoded(frozen, x, "int8", False, arena_plan)
        untrained.append(zero)
        values = {"flash_bytes": float(len(blob))}
        if "ram_bytes" in metrics:
            values["ram_bytes"] = float(
                arena.tflite_arena(info, pointer_bytes=pointer_bytes)["total"])
        return values

    removed, working, untrained = [], list(budgets), []
    for _ in range(attempts):
        real = measured(frozen)
        excess = {b.metric: real[b.metric] - costs[b.metric] for b in checked
                  if not b.holds(real[b.metric])}
        if not excess:
            break
        working = [Budget(b.metric, b.limit - max(excess[b.metric], 0) - 16)
                   if b.metric in excess else b for b in working]
        try:
            keep, more, costs = project(model, cost_model, working, plan=plan, keep=keep)
        except ValueError:
            short = [] if full_taps else _short_tap_layers(model, plan)
            if not short:
                raise
            raise _ShortTapsOverBudget(
                "keras_dnas.freeze: with the searched kernel taps of "
                + ", ".join(f"'{n}'" for n in short) + " the converted file exceeds "
                + ", ".join(f"{m}={real[m]:,.0f} > {limit:,.0f} (the flash / RAM model "
                            f"says {costs[m]:,.0f})" for m, limit in
                            ((b.metric, b.limit) for b in checked) if m in excess)
                + " and no choice of channels absorbs the excess: the shorter kernels need "
                "explicit padding (a shorter receptive field under padding='same' is not "
                "centred), whose operators the search's flash / RAM model does not price. The "
                "frozen model keeps these layers' full kernels (the seed's); fine-tune it. To "
                "keep shorter kernels, leave that much budget unused in the search, or use "
                "padding='causal'.", short) from None
        removed += more
        frozen = rebuild_with(model, plan, keep, full_taps=full_taps)
    else:
        real = measured(frozen)
    costs = dict(costs, **real)
    source = "int8 TFLite conversion of the frozen model"
    if untrained[-1]:
        source += (f" (its {untrained[-1]} all-zero bias vectors given non-zero values, as "
                   "fine-tuning leaves them: the converter drops an all-zero bias)")
    return keep, costs, removed, source, frozen


@contextlib.contextmanager
def _zero_biases_as_trained(model):
    """Give ``model``'s all-zero bias vectors non-zero values while the certificate converts
    it, then put the zeros back; yields how many.

    The converter drops an all-zero bias, so a layer whose bias never moved converts smaller
    (an untrained two-conv, two-Dense model: 3,448 B; 4,248 B once its biases moved), and the
    first step of fine-tuning gives those bytes back: certify the file that ships."""
    from keras_dnas.memory import nonzero_values

    rng = np.random.default_rng(0)
    zero = [(w, np.asarray(w.numpy())) for w in model.weights
            if w.name.split("/")[-1] == "bias" and "float" in str(w.dtype)
            and not np.asarray(w.numpy()).any()]
    try:
        for w, value in zero:
            w.assign(nonzero_values(rng, value.shape).astype(value.dtype))
        yield len(zero)
    finally:
        for w, value in zero:
            w.assign(value)


def _short_tap_layers(model, plan):
    """Names of the searched layers whose masks closed taps."""
    from keras_dnas.graph.counts import tap_owners

    return [t.name for t in tap_owners(model, plan) if t.dnas_tap_count(exact=True) < t.dnas_taps]


def recalibrate_batchnorm(model, x, batch_size=256):
    """Set every BatchNormalization's moving statistics to the exact ones of ``x``.

    Pruning changes the statistics each BN normalises; moving averages lag
    behind, and a slim network (a residual stream of a few channels) is very
    sensitive to that lag. This computes, layer by layer in graph order, the
    mean and variance of each BN's input over ``x`` in inference mode (so
    each layer sees the already recalibrated ones before it) and assigns
    them. Only BN statistics change. :func:`freeze` calls it on the
    search's ``calibration_data``; call it yourself after a fine-tuning short
    enough for the moving averages to lag, with a few thousand training samples.

    Args:
        model: a Functional or Sequential Keras model (plain or searchable).
        x: input samples (NumPy array, or list of arrays for several inputs).
        batch_size: samples per forward pass.

    Returns:
        The number of BatchNormalization layers recalibrated.

    Example:

    >>> import numpy as np, keras, keras_dnas as kd
    >>> x = np.random.rand(64, 8, 8, 1).astype("float32")
    >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
    ...                       keras.layers.BatchNormalization()])
    >>> kd.recalibrate_batchnorm(m, x)
    1
    """
    fn = walk.functional_of(model)
    # a list: one array per input (a dict by input name read in the model's order)
    inputs = input_arrays(x, "x", dtype=None,
                          names=_keras.input_keys(fn) if isinstance(x, dict) else None)
    n = len(inputs[0])
    layers = _batchnorm_layers(fn)
    if n <= batch_size:
        # One forward pass: each BN sets its statistics on its input as the pass reaches it, so
        # it sees the recalibrated ones before it, as the layer-by-layer passes below would
        # (same sums), without re-running every prefix of the network once per BN.
        with _before_call(layers, lambda layer, z: _MomentSums(layer).add(z).assign()):
            fn(_keras.call_inputs(fn, inputs), training=False)
        return len(layers)
    # Each BN's statistics need every sample through the recalibrated BNs before it: one pass
    # per BN. A pass starts where the last one ended, from the values (all samples, kept in
    # memory) of the tensors the later steps read there, not from the inputs again: the passes
    # together cost one forward pass, not one per BN. Where those values would exceed
    # REPLAY_CACHE_BYTES, a pass starts at an earlier, narrower point.
    steps, passes = _replay_points(fn, layers, n)
    batches = range(0, n, batch_size)
    known = {id(t): [a[b:b + batch_size] for b in batches] for t, a in zip(fn.inputs, inputs)}
    point = -1
    for layer, at, cut_at, cut in passes:
        if cut_at > point:  # the BNs before the cut are final, so are the values there
            known = _forward(steps[point + 1:cut_at + 1], known, cut)
            point = cut_at
        stats = _MomentSums(layer)
        for z in _forward(steps[point + 1:at], known, [layer.input])[id(layer.input)]:
            stats.add(z)
        stats.assign()
    return len(layers)


#: Bytes of activations (all calibration samples) that ``recalibrate_batchnorm`` may keep
#: in memory between its per-BN passes (64 MiB).
REPLAY_CACHE_BYTES = 64 * 2**20


def _replay_points(fn, layers, n):
    """``(steps, passes)``: the steps towards the BN inputs, in execution order, and one
    ``(layer, position, cut position, cut tensors)`` per BN in that order. The cut is the latest
    point before the BN whose tensors read later (their values for ``n`` samples within
    :data:`REPLAY_CACHE_BYTES`) are all a pass needs to go on (-1: the inputs)."""
    order = walk.nodes(fn)
    made_by = {id(t): g for g in order for t in g.outputs}
    bn = {id(layer) for layer in layers}
    needed, frontier = set(), [g for g in order if id(g.operation) in bn]
    while frontier:  # the steps the BN inputs depend on
        step = frontier.pop()
        if id(step) not in needed:
            needed.add(id(step))
            frontier.extend(made_by[id(t)] for t in step.inputs if id(t) in made_by)
    steps = [g for g in order if id(g) in needed]
    made_at = {id(t): -1 for t in fn.inputs}
    last_read = {}
    for i, step in enumerate(steps):
        made_at.update((id(t), i) for t in step.outputs)
        last_read.update((id(t), (i, t)) for t in step.inputs)
    fits = {-1: list(fn.inputs)}
    for i in range(len(steps)):
        live = [t for k, (j, t) in last_read.items() if made_at[k] <= i < j]
        if live and n * sum(_sample_bytes(t) for t in live) <= REPLAY_CACHE_BYTES:
            fits[i] = live
    passes = []
    for at, step in enumerate(steps):
        if id(step.operation) in bn:
            i = max(i for i in fits if i < at)
            passes.append((step.operation, at, i, fits[i]))
    return steps, passes


def _sample_bytes(tensor):
    dims = tensor.shape[1:]
    if any(d is None for d in dims):  # a variable length: no bound known before the data
        return float("inf")
    return int(np.prod(dims)) * np.dtype(tensor.dtype).itemsize


def _forward(steps, known, targets):
    """Run ``steps`` batch by batch from ``known`` (``{id(tensor): [one value per batch]}``:
    what they read from earlier steps); the ``targets``' values the same way. On TensorFlow
    the steps run as one traced function (one trace per segment), elsewhere eagerly."""
    ids = list(known)
    out_ids = [id(t) for t in targets]

    def run(*arrays):
        values = dict(zip(ids, arrays))
        for step in steps:
            args, kwargs = _keras.call_arguments(step.node, values)
            if _keras.accepts_training(step.operation):
                kwargs["training"] = False
            values.update(zip([id(t) for t in step.outputs],
                              keras.tree.flatten(step.operation(*args, **kwargs))))
        return [values[k] for k in out_ids]

    if steps and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # TensorFlow counts traces per code object, so each segment's (and each later
        # recalibration's) own trace of ``run`` would read as retracing one function and log
        # "triggered tf.function retracing" after five: a partial is a key of its own.
        run = tf.function(functools.partial(run), autograph=False, reduce_retracing=True)
    out = {k: [] for k in out_ids}
    with _no_gradient_record():  # the kept values must not hold PyTorch autograd graphs
        for i in range(len(known[ids[0]])):
            for k, v in zip(out_ids, run(*[known[k][i] for k in ids])):
                out[k].append(v)
    return out


def _no_gradient_record():
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


class _MomentSums:
    """Per-channel sums of a BN layer's inputs (float64) and the exact statistics they give."""

    def __init__(self, layer):
        self.layer, self.total, self.total_sq, self.rows = layer, 0.0, 0.0, 0
        self.axis = layer.axis if layer.axis >= 0 else len(layer.input.shape) + layer.axis

    def add(self, z):
        z = keras.ops.convert_to_numpy(z)
        z = np.moveaxis(z, self.axis, -1).reshape(-1, z.shape[self.axis])
        # accumulated in float64 without a float64 copy of the batch (4x faster)
        self.total = self.total + z.sum(0, dtype=np.float64)
        self.total_sq = self.total_sq + np.einsum("ij,ij->j", z, z, dtype=np.float64)
        self.rows += z.shape[0]
        return self

    def assign(self):
        mean = self.total / self.rows
        var = np.maximum(self.total_sq / self.rows - mean * mean, 0.0)
        self.layer.moving_mean.assign(mean.astype("float32"))
        self.layer.moving_variance.assign(var.astype("float32"))


def _batchnorm_layers(fn):
    layers = [layer for layer in fn.layers if isinstance(layer, L.BatchNormalization)]
    for layer in layers:
        if _keras.inbound_node_count(layer) != 1:
            raise ValueError(f"BatchNormalization '{layer.name}' is shared by several calls; "
                             "its statistics cannot be recalibrated per call.")
    return layers


@contextlib.contextmanager
def _before_call(layers, hook):
    """Inside the block, each layer's ``call`` first runs ``hook(layer, input)``."""
    def hooked(layer):
        original = layer.call

        def call(z, *args, **kwargs):
            hook(layer, z)
            return original(z, *args, **kwargs)

        return call

    try:
        for layer in layers:  # an instance attribute, removed below: the class is untouched
            object.__setattr__(layer, "call", hooked(layer))
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("call", None)


class BatchNormCalibrator:
    """Exact BN statistics of a fixed-size sample, again and again, in one compiled pass.

    What :func:`recalibrate_batchnorm` does for a sample that fits one batch, for a caller
    that recalibrates often (``DNASCallback`` before every validation): the forward pass is
    Keras' compiled ``predict_on_batch`` of a model sharing ``model``'s layers, traced once,
    so each later call costs one inference pass instead of an eager one (an eager pass through
    masked layers costs several times a validation of a small model). Each BN sets its
    moving statistics to the moments of its input over the sample (float32
    ``keras.ops.moments``; the float64 sums of :func:`recalibrate_batchnorm` differ in the
    last bits) as the pass reaches it.

    Example:

    >>> import numpy as np, keras, keras_dnas as kd
    >>> from keras_dnas.freeze import BatchNormCalibrator
    >>> x = np.random.rand(32, 8, 8, 1).astype("float32")
    >>> m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
    ...                       keras.layers.BatchNormalization()])
    >>> BatchNormCalibrator(m)(x)
    1
    """

    def __init__(self, model):
        fn = walk.functional_of(model)
        self.layers = _batchnorm_layers(fn)
        self._pass = keras.Model(fn.inputs, fn.outputs, name=f"{fn.name}_bn_calibration")

    def __call__(self, x):
        """Set the statistics on ``x`` (all of it is one batch); returns the BN count."""
        def set_moments(layer, z):
            rank = len(layer.input.shape)
            axis = layer.axis if layer.axis >= 0 else rank + layer.axis
            mean, var = keras.ops.moments(z, axes=[a for a in range(rank) if a != axis])
            layer.moving_mean.assign(keras.ops.cast(mean, layer.moving_mean.dtype))
            layer.moving_variance.assign(keras.ops.cast(var, layer.moving_variance.dtype))

        if not self.layers:
            return 0
        # the hooks are traced into the pass's compiled function on its first call
        with _before_call(self.layers, set_moments):
            self._pass.predict_on_batch(x)
        return len(self.layers)
