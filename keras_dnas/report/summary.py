"""kd.summary(): per-layer costs and totals against a target's flash and RAM."""

from keras_dnas import targets
from keras_dnas.costs.model import CostModel, to_python
from keras_dnas.graph.counts import hard_counts
from keras_dnas.graph import analyze, walk
from keras_dnas.layers.masked import is_masked
from keras_dnas.report.floor import layer_rows
from keras_dnas.vocabulary import Results


class Summary(Results):
    """Result of :func:`summary`: a dict (JSON-ready) that prints as a table."""

    def __str__(self):
        return self.table()

    def table(self):
        rows = self["layers"]
        head = ("layer", "op", "channels", "params", "MACs", "act. bytes", "cycles")
        body = [(r["name"], r["op"], f"{r['channels_kept']}/{r['channels_total']}",
                 f"{r['params']:,}", f"{r['macs']:,}", f"{r['activation_bytes']:,}",
                 f"{r['cycles']:,.0f}") for r in rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
                  for i, h in enumerate(head)]
        line = "  ".join("{:<%d}" % w for w in widths)
        out = [f"Model '{self['model']}' on {self['target']}", line.format(*head),
               "  ".join("-" * w for w in widths)]
        out += [line.format(*b) for b in body]
        t = self
        out.append("")
        out.append(f"params {t['params']:,}   MACs {t['macs']:,}   "
                   f"latency {t['latency_ms']:.3f} ms ({t['latency_cycles']:,.0f} cycles)   "
                   f"energy {t['energy_uj']:.2f} uJ")
        if "flash_bytes" in t:
            out.append(f"flash {t['flash_bytes']:,} B of {t['target_flash_bytes']:,} "
                       f"({100 * t['flash_bytes'] / t['target_flash_bytes']:.1f} %)   "
                       f"arena {t['ram_bytes']:,} B of {t['target_ram_bytes']:,} "
                       f"({100 * t['ram_bytes'] / t['target_ram_bytes']:.1f} %; "
                       f"head {t['arena_head_bytes']:,} B)")
        return "\n".join(out)


def summary(model, target=None, memory="auto", print_fn=None, arena_plan="tflm",
            representative_data=None):
    """Per-layer channels, params, MACs, activation bytes and cycles, plus totals.

    Works for an original model, a searchable one (current masks) and a
    frozen one. Totals include ``params``, ``macs``, ``latency_ms``,
    ``latency_cycles``, ``energy_uj`` and, with a memory model,
    ``flash_bytes``, ``ram_bytes`` (the tensor arena on the target: its
    ``arena_head_bytes`` plus ``arena_tail_bytes``) against the target's flash
    and RAM (``arena_bytes``, the old name of ``ram_bytes``, still reads).

    Args:
        model: a Functional or Sequential Keras model.
        target: a :class:`~keras_dnas.targets.HardwareTarget` or its name. Default: the
            target a ``DNASCallback`` searched ``model`` for, or the one ``kd.freeze``
            certified it on, else ``"stm32h743"``.
        memory: ``"auto"`` builds the flash/RAM model (one int8 conversion, cached per structure:
            a plain model's own conversion, so its flash is ``len`` of that ``.tflite``; a
            searchable model's full-width structure with realistic weights);
            ``None`` skips flash and RAM; or a ready memory model.
        print_fn: called with the table (e.g. ``print``); nothing is printed
            by default.
        arena_plan: ``"tflm"`` (TFLite Micro's own arena layout) or ``"offline"``: the
            arena of the file ``kd.export.to_tflite(..., arena_plan="offline")`` writes.
        representative_data: the calibration inputs the shipped file is converted with (an
            array, or a list of arrays for several inputs), for ``memory="auto"``. Default: 8
            fixed random samples. The flash of an int8 file depends on calibration only where
            it decides which constants are equal (e.g. a bias that saturates int32 on one
            data set: the converter rescales that kernel); with the same data as
            ``kd.export.to_tflite``, a plain model's ``flash_bytes`` is ``len`` of that file.

    Returns:
        A :class:`Summary` (a dict; ``str()`` gives the table).

    Example:

    >>> import keras_dnas as kd
    >>> s = kd.summary(kd.zoo.ds_cnn(), "stm32h743", memory=None)
    >>> s["macs"]
    2656768
    """
    target = targets.get(target if target is not None else target_of(model))
    searchable = any(is_masked(layer) for layer in walk.functional_of(model).layers)
    if not searchable:  # nested sub-models: one flat graph, layer names as kd.prepare's
        model = walk.flatten(model)
    else:  # Choice blocks: the structure of the argmax alternatives (what freeze keeps)
        from keras_dnas.prepare import collapse

        model = collapse(model)
    plan = analyze(model, masked_only=searchable)
    counts = hard_counts(model, plan) if searchable else [g.size for g in plan.groups]
    if memory == "auto":
        from keras_dnas import memory as memory_lib

        memory = memory_lib.MemoryModel.from_model(model, plan, target=target,
                                                   representative_data=representative_data)
    from keras_dnas.export import offline

    memory = offline.memory_for(memory, arena_plan)
    cost_model = CostModel(plan, target, memory=memory)
    totals = {k: to_python(v) for k, v in cost_model.evaluate(counts).items()}
    rows = layer_rows(plan, counts, target)
    out = Summary(model=model.name, target=target.name, layers=rows,
                  params=int(totals["params"]), macs=int(totals["macs"]),
                  latency_cycles=float(totals["latency_cycles"]),
                  latency_ms=float(totals["latency_ms"]), energy_uj=float(totals["energy_uj"]))
    if memory is not None:
        parts = memory.ram_parts(counts)
        out.update(flash_bytes=int(totals["flash_bytes"]), ram_bytes=int(totals["ram_bytes"]),
                   arena_head_bytes=int(parts["head"]), arena_tail_bytes=int(parts["tail"]),
                   target_flash_bytes=int(target.flash_bytes), target_ram_bytes=int(target.ram_bytes),
                   fits_flash=totals["flash_bytes"] <= target.flash_bytes,
                   fits_ram=totals["ram_bytes"] <= target.ram_bytes)
    if print_fn is not None:
        print_fn(out.table())
    return out


def target_of(model):
    """The target ``model`` was searched for or certified on (``"stm32h743"`` if neither)."""
    searched = (getattr(model, "dnas_search", None) or {}).get("target")
    certified = (getattr(model, "dnas_certificate", None) or {}).get("target_config")
    if searched is not None:
        return searched
    if certified is not None:
        return targets.HardwareTarget.from_dict(certified)
    return "stm32h743"
