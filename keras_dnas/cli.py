"""The `keras-dnas` command line: inspect a `.tflite` model, list hardware targets.

Usage::

    keras-dnas inspect model.tflite [--target stm32h743] [--json]
    keras-dnas export-c model.tflite [--target stm32h743] [--out DIR] [--name model]
    keras-dnas targets [--json]
    python -m keras_dnas.cli ...            # the same without the console script

`inspect` runs the model in TensorFlow Lite Micro (in a child process: a TFLite Micro abort
is reported as an error) to report the flash (flatbuffer bytes) and the tensor arena on the
target (head + tail for the target's pointer size, 32-bit without `--target`: the number
`kd.summary` / `kd.freeze` certify; the 64-bit host interpreter's figure is shown labelled as
such), lists the operators
(counts per type, MACs) and the input / output quantisation. With `--target` every figure is
compared with the target's flash and RAM, and an *estimated* latency is derived from the
operators' tensor shapes with the target's latency model (`keras_dnas.export.estimate`).

`export-c` writes `<name>.h` / `<name>.cc` for a TFLite Micro application
(`keras_dnas.export.to_c`): the model as an aligned C array, the tensor arena size for the
target and the `MicroMutableOpResolver` registrations of exactly the model's operators.

Exit status: 0 on success, 1 for a missing or invalid file, an unknown target or a model TFLite
Micro cannot load, 2 for bad command-line usage.
"""

import argparse
import collections
import json
import os
import sys

from keras_dnas.vocabulary import Results

_PROG = "keras-dnas"

# Where the latency coefficients of a latency model come from when the target's sources do
# not say "measured" / "fitted" / "estimated".
_MODEL_PROVENANCE = {"gap8_paper": "published formula (paper B)"}


class _CLIError(Exception):
    """An error reported as `keras-dnas: error: ...` with exit status 1."""


def _mib(n):
    return f"{n:,} B ({n / 1024:,.1f} KiB)"


def coefficient_source(target):
    """Where a target's latency coefficients come from: measured, estimated or a formula.

    `"measured"` when the scale or any per-op coefficient was fitted to (or read off)
    measurements, `"estimated"` when all of them are estimates, otherwise a description of
    the latency model's origin.

    Example:

    >>> from keras_dnas import targets
    >>> from keras_dnas.cli import coefficient_source
    >>> coefficient_source(targets.get("stm32l4r5")), coefficient_source(targets.get("stm32h743"))
    ('measured', 'estimated')
    """
    from keras_dnas.targets import COEFFICIENTS

    keys = ["scale"] + [f"cycles.{k}" for k in COEFFICIENTS]
    texts = [target.sources.get(k, "").strip().lower() for k in keys]
    texts = [t for t in texts if t]
    if any(t.startswith(("measured", "fitted")) for t in texts):
        return "measured"
    if target.latency_model in _MODEL_PROVENANCE:
        return _MODEL_PROVENANCE[target.latency_model]
    if texts and all(t.startswith("estimated") for t in texts):
        return "estimated"
    return "see target.sources"


def _target(name):
    """A registered target's name, or the path of a JSON file describing a board
    (``HardwareTarget.to_json()``): a board that is not built in, on the command line."""
    from keras_dnas import targets

    try:
        if isinstance(name, str) and (name.lower().endswith(".json") or os.path.isfile(name)):
            if not os.path.isfile(name):
                raise ValueError(f"No such target file: '{name}'. Received: --target {name!r}")
            with open(name, encoding="utf-8") as f:
                text = f.read()
            try:
                return targets.HardwareTarget.from_json(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"Target file '{name}' is not JSON ({e}). Received: "
                                 f"--target {name!r}") from None
        return targets.get(name)
    except ValueError as e:
        message = str(e).replace("pass kd.targets.HardwareTarget(...) or register one "
                                 "(kd.targets.register)",
                                 "pass a JSON file of its fields (kd.targets.HardwareTarget"
                                 "(...).to_json(), e.g. keras_dnas/targets/data/nrf52840.json)")
        raise _CLIError(message) from None


# ------------------------------------------------------------------------------ inspect


def _read_model(path):
    from keras_dnas import _flatbuffer

    if not os.path.exists(path):
        raise _CLIError(f"No such file: '{path}'. Received: {path!r}")
    if os.path.isdir(path):
        raise _CLIError(f"Expected a .tflite file, not a directory. Received: {path!r}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _CLIError(f"Cannot read '{path}': {e.strerror}. Received: {path!r}") from None
    try:
        return _flatbuffer.as_model_bytes(data)
    except ValueError as e:
        keras_file = data[:4] == b"PK\x03\x04" or data[:8] == b"\x89HDF\r\n\x1a\n"
        hint = (" It is a Keras model file: the command line reads the int8 .tflite that "
                "TFLite Micro runs, which needs your representative data to convert: "
                "open(path, 'wb').write(kd.export.to_tflite(keras.models.load_model("
                f"'{path}'), representative_data=x[:256]))") if keras_file else ""
        raise _CLIError(f"'{path}' is not a TFLite model: {e}{hint}") from None


def _measure(path, data, target):
    """`measure` with TFLite Micro's failures (reported or crashed) as CLI errors."""
    from keras_dnas.export import measure

    try:
        return measure(data, target=target)
    except ValueError as e:
        raise _CLIError(f"TensorFlow Lite Micro cannot load '{path}': {e}") from None
    except RuntimeError as e:  # TFLite Micro aborted (in its child process)
        raise _CLIError(f"TensorFlow Lite Micro failed on '{path}': {e}") from None


def inspect_model(path, target=None):
    """Everything `keras-dnas inspect` reports, as a JSON-ready dict.

    Args:
        path: Path to a `.tflite` file.
        target: Optional target name or `HardwareTarget`.

    Returns:
        A dict with `file`, `flash_bytes`, `ram_bytes` (the arena on the target, for its
        `pointer_bytes`, 4 without a target, as `kd.summary` certifies it; = `arena_head_bytes`
        + `arena_tail_bytes`; the old `arena_bytes` still reads), `host_arena_bytes` / `host_arena_head_bytes` /
        `host_arena_tail_bytes` (what the 64-bit host interpreter allocated), `quantization`,
        `inputs`, `outputs`, `ops` (operator type -> count, in order of first use),
        `operators` (per operator: index, name, MACs), `macs`,
        and with a target a `target` dict (name, core, clock, flash / RAM sizes, `fits_flash`,
        `fits_ram`, percentages, `latency_ms` / `latency_cycles` with `latency_estimated=True`).

    Raises:
        ValueError: For a missing or invalid file, an unknown target or a model TensorFlow
            Lite Micro cannot load.

    Example:

    >>> import keras, numpy as np, os, pathlib, tempfile
    >>> from keras_dnas.export import to_tflite
    >>> from keras_dnas.cli import inspect_model
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.tflite")
    >>> _ = pathlib.Path(path).write_bytes(to_tflite(model, np.random.rand(16, 8).astype("float32")))
    >>> r = inspect_model(path, target="stm32h743")
    >>> r["flash_bytes"] == os.path.getsize(path), r["ops"], r["target"]["fits_ram"]
    (True, {'FULLY_CONNECTED': 1}, True)
    """
    try:
        return _inspect(path, target)
    except _CLIError as e:
        raise ValueError(str(e)) from None


# What `inspect` reports of `measure`'s flash and arena figures, in this order.
_MEASURED_ARENA = ("flash_bytes", "ram_bytes", "arena_head_bytes", "arena_tail_bytes",
                   "pointer_bytes", "host_arena_bytes", "host_arena_head_bytes",
                   "host_arena_tail_bytes", "arena_plan")


def _inspect(path, target_name):
    from keras_dnas.export import offline
    from keras_dnas.export.estimate import estimate

    target = _target(target_name) if target_name is not None else None
    data = _read_model(path)
    measured = _measure(path, data, target)
    est = estimate(data, target)
    operators = [{k: v for k, v in row.items() if k != "cycles" or target is not None}
                 for row in est["layers"]]
    report = Results({
        "file": os.path.abspath(path),
        **{k: measured[k] for k in _MEASURED_ARENA},
        "greedy_arena_head_bytes": _greedy_head(offline, data),
        **{k: measured[k] for k in ("quantization", "inputs", "outputs")},
        "ops": dict(collections.Counter(measured.ops)),
        "operators": operators,
        "macs": est["macs"],
    })
    if target is not None:
        report["target"] = {
            "name": target.name,
            "core": target.core,
            "clock_mhz": target.clock_mhz,
            "flash_bytes": target.flash_bytes,
            "ram_bytes": target.ram_bytes,
            "fits_flash": measured.flash_bytes <= target.flash_bytes,
            "fits_ram": measured.ram_bytes <= target.ram_bytes,
            "flash_percent": 100.0 * measured.flash_bytes / target.flash_bytes,
            "ram_percent": 100.0 * measured.ram_bytes / target.ram_bytes,
            "latency_ms": est["latency_ms"],
            "latency_cycles": est["cycles"],
            "latency_estimated": True,
            "latency_model": target.latency_model,
            "latency_coefficients": coefficient_source(target),
            "latency_unmodelled_ops": est["unmodelled"],
        }
    return report


def _greedy_head(offline, data):
    try:
        return offline.greedy_head(data)
    except ValueError:  # e.g. several subgraphs: not replayed
        return None


def _tensor_line(kind, t):
    shape = "x".join(str(d) for d in t["shape"])
    if t["scale"] is not None:
        quant = f"scale={t['scale']:.6g} zero_point={t['zero_point']}"
    else:
        quant = "not quantised" if t["dtype"].startswith("float") else "no per-tensor scale"
    return f"  {kind:<7}{t['name']}  {t['dtype']}[{shape}]  {quant}"


def _format_inspect(r):
    lines = [
        f"{r['file']}",
        f"  flash   {_mib(r['flash_bytes'])}  (flatbuffer size)",
        f"  arena   {_mib(r['ram_bytes'])}  = head {r['arena_head_bytes']:,} B (activations, "
        f"scratch) + tail {r['arena_tail_bytes']:,} B (persistent), TFLite Micro on a "
        f"{8 * r['pointer_bytes']}-bit target",
        f"          host interpreter (64-bit): {r['host_arena_bytes']:,} B, not the board's",
        "  plan    " + ("offline (OfflineMemoryAllocation metadata); TFLite Micro's greedy "
                         f"planner would need a head of {r['greedy_arena_head_bytes']:,} B"
                         if r["arena_plan"] == "offline" and r["greedy_arena_head_bytes"]
                         else "TFLite Micro's greedy planner"),
        f"  type    {r['quantization']}",
        f"  MACs    {r['macs']:,}",
    ]
    lines += [_tensor_line("input", t) for t in r["inputs"]]
    lines += [_tensor_line("output", t) for t in r["outputs"]]
    has_cycles = "target" in r
    by_type = collections.OrderedDict()
    for row in r["operators"]:
        entry = by_type.setdefault(row["name"], {"count": 0, "macs": 0, "cycles": 0.0})
        entry["count"] += 1
        entry["macs"] += row["macs"]
        entry["cycles"] += row.get("cycles", 0.0)
    lines.append("")
    head = ["operator", "count", "MACs"] + (["est. cycles"] if has_cycles else [])
    body = [[name, str(e["count"]), f"{e['macs']:,}"]
            + ([f"{e['cycles']:,.0f}"] if has_cycles else []) for name, e in by_type.items()]
    total = ["total", str(len(r["operators"])), f"{r['macs']:,}"]
    if has_cycles:
        total.append(f"{r['target']['latency_cycles']:,.0f}")
    widths = [max(len(row[i]) for row in [head, total] + body) for i in range(len(head))]

    def fmt(row):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "  " + "  ".join(cells)

    lines += [fmt(head), "  " + "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in body] + [fmt(total)]
    if has_cycles:
        t = r["target"]
        verdict = {True: "fits", False: "DOES NOT FIT"}
        board = ", ".join(filter(None, [t["core"], f"{t['clock_mhz']:g} MHz"]))  # core: optional
        lines += [
            "",
            f"Target {t['name']} ({board})",
            f"  flash    {r['flash_bytes']:>12,} B of {t['flash_bytes']:>12,} B  "
            f"{t['flash_percent']:6.1f} %  {verdict[t['fits_flash']]}",
            f"  RAM      {r['ram_bytes']:>12,} B of {t['ram_bytes']:>12,} B  "
            f"{t['ram_percent']:6.1f} %  {verdict[t['fits_ram']]}  (tensor arena)",
            f"  latency  {t['latency_ms']:.3f} ms ({t['latency_cycles']:,.0f} cycles), estimated "
            f"from tensor shapes with the {t['latency_model']} model "
            f"(coefficients: {t['latency_coefficients']})",
        ]
        if r["quantization"] != "int8":
            lines.append("           (the latency model describes int8 kernels; this model is "
                         f"{r['quantization']})")
        if t["latency_unmodelled_ops"]:
            lines.append(f"           not costed: {', '.join(t['latency_unmodelled_ops'])}")
    return "\n".join(lines)


def _cmd_inspect(args):
    report = _inspect(args.model, args.target)
    print(json.dumps(report, indent=2) if args.json else _format_inspect(report))
    return 0


# ------------------------------------------------------------------------------ export-c


def _cmd_export_c(args):
    from keras_dnas.export import to_c

    target = _target(args.target) if args.target is not None else None
    data = _read_model(args.model)
    try:
        out = to_c(data, args.out, target=target, arena_bytes=args.arena_bytes, name=args.name)
    except ValueError as e:
        raise _CLIError(str(e)) from None
    except RuntimeError as e:  # TFLite Micro aborted on the model (in its child process)
        raise _CLIError(f"TensorFlow Lite Micro failed on '{args.model}': {e}") from None
    except OSError as e:
        raise _CLIError(f"Cannot write to '{args.out}': {e.strerror}.") from None
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    bits = 8 * out["pointer_bytes"]
    where = f"target {out['target']}" if out["target"] else "a 32-bit MCU (no --target)"
    print(f"wrote {out['header']}\nwrote {out['source']}")
    print(f"  model   {out['model_bytes']:,} B (g_{args.name}[], 16-byte aligned)")
    print(f"  arena   {out['arena_bytes']:,} B for {where}, {bits}-bit pointers: head "
          f"{out['arena_head_bytes']:,} B + tail {out['arena_tail_bytes']:,} B "
          f"({args.name.upper()}_ARENA_SIZE)")
    print(f"  ops     {', '.join(out['resolver_methods'])} "
          f"({args.name.upper()}_REGISTER_OPS, MicroMutableOpResolver<{len(out['ops'])}>)")
    return 0


# ------------------------------------------------------------------------------ targets


def targets_table():
    """One JSON-ready dict per registered target (what `keras-dnas targets` lists).

    Example:

    >>> from keras_dnas.cli import targets_table
    >>> row = [r for r in targets_table() if r["name"] == "stm32h743"][0]
    >>> row["core"], row["clock_mhz"], row["latency_model"], row["coefficients"]
    ('Cortex-M7', 480.0, 'cmsis_nn', 'estimated')
    """
    from keras_dnas import targets

    builtin = set(targets.builtin_names())
    return [
        {
            "name": t.name,
            "core": t.core,
            "clock_mhz": t.clock_mhz,
            "flash_bytes": t.flash_bytes,
            "ram_bytes": t.ram_bytes,
            "latency_model": t.latency_model,
            "coefficients": coefficient_source(t),
            "builtin": t.name in builtin,
            "description": t.description,
        }
        for t in targets.list_targets()
    ]


def _format_targets(rows):
    head = ["name", "core", "clock", "flash", "RAM (arena)", "latency model", "coefficients"]
    body = [
        [r["name"], r["core"], f"{r['clock_mhz']:g} MHz", f"{r['flash_bytes'] // 1024:,} KiB",
         f"{r['ram_bytes'] // 1024:,} KiB", r["latency_model"], r["coefficients"]]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in [head, ["-" * w for w in widths]] + body]
    return "\n".join(lines)


def _cmd_targets(args):
    rows = targets_table()
    print(json.dumps(rows, indent=2) if args.json else _format_targets(rows))
    return 0


# ------------------------------------------------------------------------------ main


def _parser():
    from keras_dnas import __version__

    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="keras_dnas: inspect int8 TFLite models for microcontrollers, export them "
        "as C source for TensorFlow Lite Micro and list the built-in hardware targets.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    p = sub.add_parser(
        "inspect",
        help="flash, TFLite Micro arena, operators and quantisation of a .tflite model",
        description="Measure a .tflite model in TensorFlow Lite Micro: flash (flatbuffer size), "
        "tensor arena (head + tail), operators, MACs, input / output quantisation; with "
        "--target, compare with the target's flash and RAM and estimate the latency.",
    )
    p.add_argument("model", help="path to a .tflite file")
    p.add_argument("--target", "-t", help="hardware target name (see `keras-dnas targets`) or "
                   "a JSON file describing a board (HardwareTarget.to_json())")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_inspect)
    p = sub.add_parser(
        "export-c",
        help="C header / source for TFLite Micro: model array, arena size, op resolver",
        description="Write <name>.h and <name>.cc for a TensorFlow Lite Micro application: "
        "the .tflite bytes as a 16-byte aligned C array, the tensor arena size for the target "
        "(TFLite Micro's planner replayed, persistent part for the target's pointer size) and "
        "a macro registering exactly the model's operators in a MicroMutableOpResolver.",
    )
    p.add_argument("model", help="path to a .tflite file")
    p.add_argument("--target", "-t", help="hardware target name (see `keras-dnas targets`) or "
                   "a JSON file describing a board; default: a 32-bit MCU")
    p.add_argument("--out", "-o", default=".", help="output directory (default: .)")
    p.add_argument("--name", default="model",
                   help="C identifier for the files and symbols (default: model)")
    p.add_argument("--arena-bytes", type=int, default=None,
                   help="arena size to write instead of the planned one (not below it)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_export_c)
    p = sub.add_parser(
        "targets",
        help="list the hardware targets",
        description="List the registered hardware targets: core, clock, flash, RAM for the "
        "tensor arena, latency model and where its coefficients come from.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_targets)
    return parser


def main(argv=None):
    """Run the `keras-dnas` command line.

    Args:
        argv: The arguments without the program name (default: `sys.argv[1:]`).

    Returns:
        The exit status: 0 on success, 1 for an error (printed to stderr as
        `keras-dnas: error: ...`), 2 for bad usage (argparse).

    Example:

    >>> from keras_dnas.cli import main
    >>> main(["targets"])  # doctest: +ELLIPSIS
    name ...
    0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _CLIError as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `keras-dnas targets | head -1`
        return 0


if __name__ == "__main__":
    sys.exit(main())
