"""HardwareTarget schema, registry, built-in data files and calibration."""

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest

from keras_dnas import calibration, targets
from keras_dnas.costs import latency
from benchmarks._bench import layer_costs, mlperf_fidelity
from benchmarks._bench import mlperf_reference as mlperf
from keras_dnas.targets import HardwareTarget

MIB, KIB = 1 << 20, 1 << 10

# Required built-ins, as data: name -> (core, clock MHz, arena RAM, flash, latency model).
BUILTINS = {
    "stm32h743": ("Cortex-M7", 480, 512 * KIB, 2 * MIB, "cmsis_nn"),
    "stm32f746": ("Cortex-M7", 216, 320 * KIB, 1 * MIB, "cmsis_nn"),
    "stm32l4r5": ("Cortex-M4F", 120, 640 * KIB, 2 * MIB, "cmsis_nn"),
    "nrf52840": ("Cortex-M4F", 64, 256 * KIB, 1 * MIB, "cmsis_nn"),
    "gap8": (None, None, 512 * KIB, None, "gap8_paper"),
}


def _minimal(**changes):
    config = {"name": "t", "clock_mhz": 100, "flash_bytes": MIB, "ram_bytes": 128 * KIB}
    config.update(changes)
    return config


# ----------------------------------------------------------------------------- schema


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_values(name):
    core, clock, ram, flash, model = BUILTINS[name]
    t = targets.get(name)
    assert t.name == name and t.latency_model == model and t.ram_bytes == ram
    assert t.pointer_bytes == 4 and t.channel_multiple == 4
    if core:
        assert t.core == core and t.clock_mhz == clock and t.flash_bytes == flash


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_round_trip_and_sources(name):
    t = targets.get(name)
    assert HardwareTarget.from_dict(t.to_dict()) == t
    assert HardwareTarget.from_json(t.to_json()) == t
    assert json.loads(json.dumps(t.to_dict())) == t.to_dict()
    # Every number a search depends on says where it comes from.
    for field in ("clock_mhz", "ram_bytes", "flash_bytes", "scale", "energy_nj_per_cycle",
                  "flash_read_cycles", "latency_model"):
        assert t.sources.get(field), f"{name}: no source for {field}"
    if t.latency_model == "cmsis_nn":
        for k in targets.COEFFICIENTS:
            assert t.sources.get(f"cycles.{k}"), f"{name}: no source for cycles.{k}"


def test_sources_are_honest():
    # No TFLM + CMSIS-NN Cortex-M7 rows exist: the M7 scales must say "estimated".
    for name in ("stm32h743", "stm32f746"):
        src = targets.get(name).sources["scale"]
        assert src.startswith("estimated") and "Cortex-M7" in src
    assert targets.get("stm32l4r5").sources["scale"].startswith("fitted")
    assert targets.get("stm32l4r5").sources["energy_nj_per_cycle"].startswith("measured")
    assert targets.get("stm32f746").sources["flash_read_cycles"].startswith("measured")
    assert not any(mlperf_fidelity.is_cmsis_nn_stack(r["stack"], r["round"])
                   for r in mlperf_fidelity.load_results() if r["core"] == "Cortex-M7")


def test_builtin_files_are_exactly_the_registry_builtins():
    assert set(BUILTINS) <= set(targets.builtin_names())
    assert set(targets.builtin_names()) <= set(targets.names())
    assert [t.name for t in targets.list_targets()] == targets.names()


@pytest.mark.parametrize("field, value", [
    ("name", ""),
    ("clock_mhz", 0),
    ("clock_mhz", float("nan")),
    ("flash_bytes", -1),
    ("ram_bytes", 1.5),
    ("pointer_bytes", 3),
    ("pointer_bytes", 2),  # accepted here once, then refused by every arena model
    ("channel_multiple", 0),
    ("latency_model", "tflm_magic"),
    ("cycles", {"conv": 1.0}),
    ("cycles", {**targets.DEFAULT_CYCLES, "winograd": 1.0}),
    ("cycles", {**targets.DEFAULT_CYCLES, "conv": -1.0}),
    ("scale", 0.0),
    ("flash_read_cycles", -0.1),
    ("energy_nj_per_cycle", float("inf")),
    ("scalar_penalty", 0.5),
    ("sources", {"speed": "fast"}),
    ("sources", {"scale": ""}),
    ("description", 3),
])
def test_validation_names_the_field(field, value):
    with pytest.raises(ValueError) as info:
        HardwareTarget(**_minimal(**{field: value}))
    message = str(info.value)
    assert field in message and "Received:" in message


def test_from_dict_unknown_and_missing_keys():
    with pytest.raises(ValueError, match=r"Unknown HardwareTarget field\(s\) \['clock_ghz'\]"):
        HardwareTarget.from_dict(_minimal(clock_ghz=1))
    with pytest.raises(ValueError, match=r"\['ram_bytes'\] are required"):
        HardwareTarget.from_dict({"name": "t", "clock_mhz": 1, "flash_bytes": 1})


def test_frozen_hashable_and_replace():
    t = targets.get("stm32h743")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.clock_mhz = 1
    with pytest.raises(TypeError):
        t.cycles["conv"] = 0.0
    assert hash(t) == hash(HardwareTarget.from_dict(t.to_dict()))
    slow = t.replace(clock_mhz=240)
    assert slow.clock_mhz == 240.0 and t.clock_mhz == 480.0
    with pytest.raises(ValueError, match="clock_mhz"):
        t.replace(clock_mhz=-1)


# ----------------------------------------------------------------------------- registry


def test_get_accepts_names_and_targets():
    t = targets.get("stm32h743")
    assert targets.get("STM32H743") is t and targets.get("stm32-h743".replace("-", "")) is t
    assert targets.get(t) is t


def test_get_typo_lists_known_names():
    with pytest.raises(ValueError) as info:
        targets.get("stm32h7")
    message = str(info.value)
    assert "Received: name='stm32h7'" in message
    assert "Did you mean 'stm32h743'?" in message
    for name in BUILTINS:
        assert f"'{name}'" in message
    with pytest.raises(ValueError, match="Received: name=3 of type int"):
        targets.get(3)
    # a board that is not built in: the message says how to describe it
    with pytest.raises(ValueError, match=r"For a board not listed, pass "
                                         r"kd\.targets\.HardwareTarget\(\.\.\.\)"):
        targets.get("esp32s3")
    with pytest.raises(ValueError, match=r"HardwareTarget\.from_dict\(d\)"):
        targets.get({"name": "esp32s3", "clock_mhz": 240, "flash_bytes": 1, "ram_bytes": 1})


def test_numpy_numbers_are_target_fields():
    t = HardwareTarget(name="np_board", clock_mhz=np.float32(64), flash_bytes=np.int64(1 << 20),
                       ram_bytes=np.int32(1 << 18), channel_multiple=np.int64(4))
    assert (t.flash_bytes, t.ram_bytes, t.channel_multiple) == (1 << 20, 1 << 18, 4)
    assert type(t.flash_bytes) is int and HardwareTarget.from_json(t.to_json()) == t


@pytest.fixture
def scratch_name():
    name = "test_scratch_target"
    yield name
    if name in targets.names():
        targets.unregister(name)


def test_register(scratch_name):
    t = targets.get("nrf52840").replace(name=scratch_name, clock_mhz=32)
    assert targets.register(t) is t
    assert targets.get(scratch_name) is t and scratch_name in targets.names()
    assert targets.register(t) is t  # the same target again is fine
    with pytest.raises(ValueError, match="overwrite=True"):
        targets.register(t.replace(clock_mhz=16))
    assert targets.register(t.replace(clock_mhz=16), overwrite=True).clock_mhz == 16
    assert targets.register(t.to_dict(), overwrite=True).clock_mhz == 32
    targets.unregister(scratch_name)
    assert scratch_name not in targets.names()
    with pytest.raises(ValueError, match="Known targets"):
        targets.unregister(scratch_name)


# ----------------------------------------------------------------------------- calibration


LAYERS = {b: mlperf.reference_layers(b) for b in mlperf.BENCHMARKS}


def _truth():
    """A made-up 'true' board: other per-op costs, scale, flash and overhead."""
    base = targets.get("nrf52840")
    cycles = {"conv": 1.3, "conv1x1": 1.9, "depthwise": 3.4, "dense": 1.2, "im2col": 2.5,
              "requant": 11.0, "add": 7.0, "pool": 3.0, "overhead": 2500.0}
    return base.replace(name="truth", scale=1.7, cycles=cycles, flash_read_cycles=0.3)


def _measure(truth, layers):
    return float(layer_costs.model_latency_ms(layers, truth))


def test_calibration_is_a_public_name_of_targets():
    # kd.targets.calibrate & co. load keras_dnas.calibration on first use (it sits above costs)
    for name in ("calibrate", "calibrate_from_csv", "read_layer_csv"):
        assert getattr(targets, name) is getattr(calibration, name)
        assert name in targets.__all__ and name in dir(targets)
    with pytest.raises(AttributeError, match="no attribute 'calibration_table'"):
        targets.calibration_table


def test_calibrate_scale_only_recovers_the_scale():
    base = targets.get("nrf52840")
    truth = base.replace(scale=3.1)
    t = targets.calibrate(base, [(LAYERS[b], _measure(truth, LAYERS[b])) for b in ("ic", "vww")],
                          fit="scale")
    assert math.isclose(t.scale, 3.1, rel_tol=1e-9)
    assert t.cycles == base.cycles and t.name == "nrf52840_calibrated"
    assert t.sources["scale"].startswith("fitted by calibrate()")


def test_single_measurement_fits_only_the_scale():
    base = targets.get("nrf52840")
    t = targets.calibrate(base, [(LAYERS["ic"], 300.0)])
    assert t.cycles == base.cycles and t.flash_read_cycles == base.flash_read_cycles
    assert math.isclose(float(layer_costs.model_latency_ms(LAYERS["ic"], t)), 300.0, rel_tol=1e-9)


def test_calibrate_two_measurements_fit_them_and_stay_non_negative():
    truth = _truth()
    meas = [(LAYERS[b], _measure(truth, LAYERS[b])) for b in ("ic", "ad")]
    t = targets.calibrate("nrf52840", meas, name="fitted")
    assert t.name == "fitted"
    assert all(v >= 0 for v in t.cycles.values()) and t.flash_read_cycles >= 0
    for layers, ms in meas:
        assert abs(float(layer_costs.model_latency_ms(layers, t)) / ms - 1) < 0.02


def test_calibrate_from_per_layer_csv_recovers_the_coefficients(tmp_path):
    truth = _truth()
    path = tmp_path / "layers.csv"
    lines = ["# per-layer cycles of a made-up board", "layer,op,taps,cin,cout,in_positions,"
             "out_positions,cycles"]
    for b in mlperf.BENCHMARKS:
        for layer in LAYERS[b]:
            g = layer["geometry"]
            cycles = latency.layer_cycles(layer["op"], g, layer["cin"], layer["cout"], truth)
            lines.append(f"{b}_{layer['name']},{layer['op']},{g['taps']},{layer['cin']},"
                         f"{layer['cout']},{g['in_positions']},{g['out_positions']},{cycles:.1f}")
    path.write_text("\n".join(lines) + "\n")
    t = targets.calibrate_from_csv("nrf52840", path, prior_weight=1e-6)
    # The data fix every coefficient; compare the products scale * coefficient.
    for k in ("conv", "conv1x1", "depthwise", "dense", "im2col", "requant", "add", "pool"):
        assert math.isclose(t.scale * t.cycles[k], truth.scale * truth.cycles[k], rel_tol=0.02), k
    assert math.isclose(t.flash_read_cycles, truth.flash_read_cycles, rel_tol=0.05)
    assert math.isclose(t.cycles["overhead"], truth.cycles["overhead"], rel_tol=0.05)
    for b in mlperf.BENCHMARKS:
        assert abs(float(layer_costs.model_cycles(LAYERS[b], t)) /
                   float(layer_costs.model_cycles(LAYERS[b], truth)) - 1) < 1e-3


def test_calibrate_from_csv_units_aliases_and_errors(tmp_path):
    path = tmp_path / "ms.csv"
    path.write_text("layer,op,taps,cin,cout,out_positions,latency_ms\n"
                    "pw,conv1x1,,64,64,125,1.0\n"
                    "bn,batchnorm,,64,64,125,0.1\n"
                    "fc,dense,1,64,12,1,0.02\n")
    with pytest.warns(UserWarning, match=r"skipped rows .*\['bn'\]"):
        t = targets.calibrate_from_csv("stm32l4r5", path, clock_mhz=80)
    assert t.clock_mhz == 80.0
    records = targets.read_layer_csv(path)
    assert records[0][0]["op"] == "conv" and records[0][0]["geometry"]["taps"] == 1
    assert records[0][2] == 1.0
    bad = tmp_path / "bad.csv"
    bad.write_text("op,cin,cout\nconv,3,16\n")
    with pytest.raises(ValueError, match="'cycles', 'latency_ms' or 'latency_us'"):
        targets.calibrate_from_csv("stm32l4r5", bad)
    bad.write_text("op,cin,cout,cycles\nwinograd,3,16,100\n")
    with pytest.raises(ValueError, match="unknown op.*Received: op='winograd'"):
        targets.calibrate_from_csv("stm32l4r5", bad)
    bad.write_text("op,cin,cout,cycles\nbatchnorm,3,3,100\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="at least one measurement"):
            targets.calibrate_from_csv("stm32l4r5", bad)


def test_calibrate_gap8_fits_the_scale_of_paper_b():
    t = targets.calibrate("gap8", [(LAYERS["ic"], 2 * 766_624 / 100e3)])
    assert math.isclose(t.scale, 2.0, rel_tol=1e-12)
    t2 = targets.calibrate("gap8", [(LAYERS[b], 3 * float(layer_costs.model_latency_ms(LAYERS[b], "gap8")))
                                    for b in mlperf.BENCHMARKS])
    assert math.isclose(t2.scale, 3.0, rel_tol=1e-9) and t2.cycles == targets.get("gap8").cycles


def test_calibrate_accepts_a_keras_model_and_a_plan():
    zoo = pytest.importorskip("keras_dnas.zoo")
    graph = pytest.importorskip("keras_dnas.graph")
    model = zoo.resnet8()
    by_records = targets.calibrate("nrf52840", [(LAYERS["ic"], 380.0)])
    by_model = targets.calibrate("nrf52840", [(model, 380.0)])
    by_plan = targets.calibrate("nrf52840", [(graph.analyze(model), 380.0)])
    assert math.isclose(by_model.scale, by_records.scale, rel_tol=1e-12)
    assert math.isclose(by_plan.scale, by_records.scale, rel_tol=1e-12)


@pytest.mark.parametrize("measurements, kwargs, match", [
    ([], {}, "at least one measurement"),
    ([(LAYERS["ic"],)], {}, "pair"),
    ([(LAYERS["ic"], -3.0)], {}, "latency_ms"),
    ([("resnet8", 3.0)], {}, "model_or_plan"),
    ([(LAYERS["ic"], 3.0)], {"fit": "everything"}, "fit must be"),
    ([(LAYERS["ic"], 3.0)], {"prior_weight": 0}, "prior_weight"),
    ([(LAYERS["ic"], 3.0)], {"clock_mhz": 0}, "clock_mhz"),
    ([([{"op": "batchnorm", "geometry": {}}], 3.0)], {}, "no operation the latency model costs"),
    ([(LAYERS["ad"], 1e-4)], {}, "exceed the measured latencies"),
])
def test_calibrate_errors(measurements, kwargs, match):
    with pytest.raises(ValueError, match=match):
        targets.calibrate("nrf52840", measurements, **kwargs)


def test_nnls_matches_scipy():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.normal(size=(int(rng.integers(2, 12)), int(rng.integers(1, 9))))
        b = rng.normal(size=a.shape[0])
        ours = calibration.nnls(a, b)
        ref, _ = optimize.nnls(a, b)
        assert np.all(ours >= 0)
        assert np.linalg.norm(a @ ours - b) <= np.linalg.norm(a @ ref - b) + 1e-9


def test_builtin_l4r5_reproduces_its_source_measurements():
    """stm32l4r5.json is calibrate(nrf52840, four MLPerf Tiny L4R5 latencies), rounded."""
    cfg = next(c for c in mlperf_fidelity.configurations()
               if c["board"] == "NUCLEO-L4R5ZI" and c["round"] == "v1.0")
    meas = [(LAYERS[b], cfg["latency_ms"][b]) for b in mlperf.BENCHMARKS]
    refit = targets.calibrate("nrf52840", meas, clock_mhz=120)
    builtin = targets.get("stm32l4r5")
    assert math.isclose(builtin.scale, refit.scale, rel_tol=1e-3)
    for k, v in builtin.cycles.items():
        assert math.isclose(v, refit.cycles[k], rel_tol=1e-3, abs_tol=1e-3), k
    for layers, ms in meas:
        assert abs(float(layer_costs.model_latency_ms(layers, builtin)) / ms - 1) < 0.03
