"""The `keras-dnas` command line, run in a child process (`python -m keras_dnas.cli`).

Oracles: `len(tflite bytes)` for flash, `keras_dnas.export.measure` for the arena and the
operators, the target registry for the targets table, `kd.summary` for MACs and latency.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras
import keras_dnas as kd
from keras_dnas import cli, targets
from keras_dnas.export import measure, to_tflite
from keras_dnas.export.estimate import estimate, tflite_layers

from tests import child

L = keras.layers
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# `python -m keras_dnas.cli ARGS`, one command after the other in the session's TensorFlow child
# (tests/child.py): one interpreter and TensorFlow import for all of them, not one each
CLI = """
import runpy, sys
sys.modules.pop("keras_dnas.cli", None)  # as a fresh `python -m` would: run the module anew
runpy.run_module("keras_dnas.cli", run_name="__main__", alter_sys=True)
"""


def _cli(*args):
    proc = child.run(CLI, argv=args, cwd=ROOT, timeout=300)
    return subprocess.CompletedProcess([sys.executable, "-m", "keras_dnas.cli", *args],
                                       proc.returncode, proc.stdout, proc.stderr)


def _tiny_model():
    x = keras.Input((10, 10, 2))
    h = L.Conv2D(4, 3, padding="same", use_bias=False)(x)
    h = L.ReLU()(L.BatchNormalization()(h))
    h = L.MaxPooling2D()(h)
    h = L.DepthwiseConv2D(3, padding="same", activation="relu")(h)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(x, L.Softmax()(L.Dense(3)(h)), name="tiny")


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    data = to_tflite(model, representative_data=np.random.rand(32, 10, 10, 2).astype("float32"))
    path = tmp_path_factory.mktemp("cli") / "tiny.tflite"
    path.write_bytes(data)
    return {"path": str(path), "bytes": data, "model": model, "measured": measure(data)}


@pytest.fixture(scope="module")
def runs(tiny_tflite):
    """Each command line run once, as `python -m keras_dnas.cli` in a child process."""
    path = tiny_tflite["path"]
    commands = {
        "inspect": ("inspect", path),
        "inspect_json_target": ("inspect", path, "--target", "stm32h743", "--json"),
        "unknown_target": ("inspect", path, "--target", "stm32h7"),
        "targets": ("targets",),
    }
    return {key: _cli(*args) for key, args in commands.items()}


def test_inspect_prints_flash_arena_ops_and_quantisation(tiny_tflite, runs):
    proc = runs["inspect"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    out, m = proc.stdout, tiny_tflite["measured"]
    assert f"flash   {len(tiny_tflite['bytes']):,} B" in out
    assert f"arena   {m.ram_bytes:,} B" in out
    assert f"head {m.arena_head_bytes:,} B" in out and f"tail {m.arena_tail_bytes:,} B" in out
    for op in ("CONV_2D", "MAX_POOL_2D", "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED",
               "SOFTMAX"):
        assert op in out
    assert "int8[1x10x10x2]" in out and "zero_point=" in out
    assert "Target" not in out


def test_inspect_json_equals_measure_and_compares_with_the_target(tiny_tflite, runs):
    proc = runs["inspect_json_target"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    m = tiny_tflite["measured"]
    assert report["flash_bytes"] == len(tiny_tflite["bytes"]) == m.flash_bytes
    assert (report["ram_bytes"], report["arena_head_bytes"], report["arena_tail_bytes"]) == (
        m.ram_bytes, m.arena_head_bytes, m.arena_tail_bytes)
    assert report["ops"] == {"CONV_2D": 1, "MAX_POOL_2D": 1, "DEPTHWISE_CONV_2D": 1, "MEAN": 1,
                             "FULLY_CONNECTED": 1, "SOFTMAX": 1}
    assert [o["name"] for o in report["operators"]] == m.ops
    assert report["inputs"] == m.inputs and report["outputs"] == m.outputs
    assert report["quantization"] == "int8"

    t, target = report["target"], targets.get("stm32h743")
    assert (t["name"], t["flash_bytes"], t["ram_bytes"]) == (
        "stm32h743", target.flash_bytes, target.ram_bytes)
    assert t["fits_flash"] and t["fits_ram"]
    assert t["flash_percent"] == pytest.approx(100 * m.flash_bytes / target.flash_bytes)
    assert t["ram_percent"] == pytest.approx(100 * m.ram_bytes / target.ram_bytes)
    assert t["latency_estimated"] is True and t["latency_ms"] > 0
    # The estimate is the Keras model's latency under the same cost model.
    expected = kd.summary(tiny_tflite["model"], "stm32h743", memory=None)
    assert t["latency_cycles"] == pytest.approx(expected["latency_cycles"], rel=1e-6)
    assert report["macs"] == expected["macs"]


def test_inspect_text_against_a_target(tiny_tflite, capsys):
    assert cli.main(["inspect", tiny_tflite["path"], "-t", "stm32h743"]) == 0
    text = capsys.readouterr().out
    assert "Target stm32h743 (Cortex-M7, 480 MHz)" in text
    assert "fits" in text and "estimated from tensor shapes" in text
    assert "not costed: SOFTMAX" in text


def test_inspect_reports_what_does_not_fit(tiny_tflite):
    small = targets.get("nrf52840").replace(name="tiny_mcu", flash_bytes=1024, ram_bytes=512)
    report = cli._inspect(tiny_tflite["path"], small)
    assert report["target"]["fits_flash"] is False and report["target"]["fits_ram"] is False
    assert "DOES NOT FIT" in cli._format_inspect(report)


def test_unknown_target_lists_the_known_ones(runs):
    proc = runs["unknown_target"]
    assert proc.returncode != 0
    assert "keras-dnas: error: Unknown hardware target" in proc.stderr
    for name in targets.builtin_names():
        assert name in proc.stderr
    assert proc.stdout == ""


def test_a_board_that_is_not_built_in_as_a_json_file(tiny_tflite, tmp_path, capsys):
    board = targets.get("nrf52840").replace(name="my_user_board", clock_mhz=32)
    path = tmp_path / "my_user_board.json"
    path.write_text(board.to_json())
    assert cli.main(["inspect", tiny_tflite["path"], "--target", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target"]["name"] == "my_user_board"
    assert report == cli._inspect(tiny_tflite["path"], board)
    text = cli._format_inspect(cli._inspect(tiny_tflite["path"], board.replace(core="")))
    assert "Target my_user_board (32 MHz)" in text  # no empty core: "(, 32 MHz)"
    assert cli.main(["inspect", tiny_tflite["path"], "--target", "esp32"]) == 1
    err = capsys.readouterr().err
    assert "For a board not listed, pass a JSON file of its fields" in err
    assert "kd.targets.register" not in err  # Python advice does not help on the command line
    assert cli.main(["export-c", tiny_tflite["path"], "-t", str(tmp_path / "no.json")]) == 1
    assert "No such target file" in capsys.readouterr().err


def test_missing_and_invalid_files_are_clear_errors(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path / "missing.tflite")]) == 1
    assert "keras-dnas: error: No such file" in capsys.readouterr().err
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"definitely not a flatbuffer")
    assert cli.main(["inspect", str(bad)]) == 1
    assert "is not a TFLite model" in capsys.readouterr().err
    assert cli.main(["inspect", str(tmp_path)]) == 1
    assert "not a directory" in capsys.readouterr().err
    saved = tmp_path / "slim.keras"  # a zip: what model.save writes
    saved.write_bytes(b"PK\x03\x04" + bytes(60))
    assert cli.main(["inspect", str(saved)]) == 1
    assert "It is a Keras model file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="No such file"):
        cli.inspect_model(str(tmp_path / "missing.tflite"))


def test_targets_lists_every_builtin(runs, capsys):
    proc = runs["targets"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["name", "core"]
    for name in targets.builtin_names():
        t = targets.get(name)
        row = next(line for line in lines if line.startswith(name + " "))
        assert f"{t.clock_mhz:g} MHz" in row and t.latency_model in row

    assert cli.main(["targets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= set(targets.builtin_names())
    by_name = {r["name"]: r for r in rows}
    assert by_name["stm32h743"]["ram_bytes"] == targets.get("stm32h743").ram_bytes
    assert by_name["stm32l4r5"]["coefficients"] == "measured"
    assert by_name["stm32h743"]["coefficients"] == "estimated"


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["inspect"], ["inspect", "m.tflite", "--bogus"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
    assert "usage: keras-dnas" in capsys.readouterr().err


def test_main_is_callable_in_process(tiny_tflite, capsys):
    assert cli.main(["inspect", tiny_tflite["path"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["flash_bytes"] == len(tiny_tflite["bytes"])
    assert cli.main(["inspect", tiny_tflite["path"], "--target", "nope"]) == 1
    assert "Known targets" in capsys.readouterr().err


# ---------------------------------------------------------------- estimate from a .tflite


def test_tflite_estimate_equals_the_keras_summary():
    model = kd.zoo.ds_cnn()
    data = to_tflite(model, np.random.rand(8, *model.input_shape[1:]).astype("float32"))
    for target in ("stm32h743", "gap8"):  # both latency models
        est = estimate(data, target)
        summary = kd.summary(model, target, memory=None)
        assert est["macs"] == summary["macs"]
        assert est["cycles"] == pytest.approx(summary["latency_cycles"], rel=1e-9)
        assert est["unmodelled"] == ["SOFTMAX"]


def test_tflite_layers_read_geometry_from_tensor_shapes(tiny_tflite):
    rows = {r["name"]: r for r in tflite_layers(tiny_tflite["bytes"])}
    conv, dw, fc = rows["CONV_2D"], rows["DEPTHWISE_CONV_2D"], rows["FULLY_CONNECTED"]
    assert (conv["op"], conv["cin"], conv["cout"], conv["geometry"]["taps"]) == ("conv", 2, 4, 9)
    assert conv["geometry"]["out_positions"] == 100
    assert (dw["op"], dw["cin"], dw["cout"], dw["geometry"]["out_positions"]) == (
        "depthwise", 4, 4, 25)
    assert (fc["op"], fc["cin"], fc["cout"]) == ("dense", 4, 3)
    assert rows["SOFTMAX"]["op"] is None


def test_inspect_shows_the_target_arena_and_labels_the_host_one(tiny_tflite, capsys):
    assert cli.main(["inspect", tiny_tflite["path"]]) == 0
    out, m = capsys.readouterr().out, tiny_tflite["measured"]
    assert m.pointer_bytes == 4 and m.host_arena_bytes > m.ram_bytes
    assert "on a 32-bit target" in out
    assert f"host interpreter (64-bit): {m.host_arena_bytes:,} B, not the board's" in out
    report = cli.inspect_model(tiny_tflite["path"], target="stm32h743")
    assert report["ram_bytes"] == measure(tiny_tflite["bytes"], "stm32h743").ram_bytes
    assert report["host_arena_bytes"] == m.host_arena_bytes


def test_a_model_tflite_micro_aborts_on_is_an_error_not_a_crash(tmp_path, capsys):
    x = keras.Input((4,))
    h = L.Dense(3, kernel_initializer="zeros", bias_initializer="zeros")(x)
    data = to_tflite(keras.Model(x, L.Softmax()(h)),
                     representative_data=np.random.default_rng(0).random((16, 4), "float32"))
    path = tmp_path / "degenerate.tflite"
    path.write_bytes(data)
    assert cli.main(["inspect", str(path)]) == 1  # in this process: it survives
    err = capsys.readouterr().err
    assert "keras-dnas: error: TensorFlow Lite Micro failed on" in err
    assert "SIGABRT" in err and "Operator 1 (SOFTMAX)" in err
