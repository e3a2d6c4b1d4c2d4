"""Messages: quantities print with separators (never `3.934e+04`), and an unreachable budget
names the layers that set its floor (`keras_dnas.report.floor`)."""

import re

import pytest

import keras_dnas as kd
from keras_dnas.memory import MemoryModel
from keras_dnas.costs.model import CostModel
from keras_dnas.report.floor import budget_floor, describe_floor
from keras_dnas.report.format import fmt_quantity
from keras_dnas.search.objectives import Budget
from tests import toys


@pytest.mark.parametrize("value, unit, text", [
    (39340.0, "bytes", "39,340 B"), (39340, "B", "39,340 B"), (1.5e9, "MACs", "1,500,000,000 MACs"),
    (2.25, "ms", "2.25 ms"), (1234.5678, "uJ", "1,234.568 uJ"), (3e-5, "ms", "0.00003 ms"),
    (0, "bytes", "0 B"), (None, "bytes", "n/a"),
])
def test_fmt_quantity(value, unit, text):
    assert fmt_quantity(value, unit) == text
    assert "e+" not in text and "e-" not in text


def test_measure_prints_no_exponent():
    r = kd.export.MeasureResult(flash_bytes=39340, ram_bytes=123456, host_arena_bytes=130000)
    assert "39,340 B" in str(r) and "123,456 B" in str(r) and "e+" not in str(r)


@pytest.fixture(scope="module")
def search():
    return kd.prepare(toys.randomize_bn(toys.plain_cnn()))


def test_budget_floor_names_the_layers(search):
    plan = search.dnas_plan
    cm = CostModel(plan, "stm32h743", memory=MemoryModel.from_model(search, plan,
                                                                    target="stm32h743"))
    floor_costs = cm.evaluate(cm.min_counts(), ["macs", "flash_bytes", "ram_bytes"])
    rows = budget_floor(cm, [Budget("macs", 10), Budget("flash_bytes", 10 ** 9),
                             Budget("ram_bytes", 100)])
    assert [r["metric"] for r in rows] == ["macs", "ram_bytes"]  # flash holds: not listed
    macs, ram = rows
    assert macs["floor"] == floor_costs["macs"] and ram["floor"] == floor_costs["ram_bytes"]
    # Layers by decreasing share; their MACs add up to the floor.
    values = [layer["value"] for layer in macs["layers"]]
    assert values == sorted(values, reverse=True) and macs["layers"][0]["name"] == "c1"
    assert sum(values) == macs["floor"]
    frozen = {layer["name"]: layer["frozen"] for layer in macs["layers"]}
    assert frozen["fc"] is not None and frozen["c1"] is None  # the output layer is frozen
    # RAM: the model input (frozen) is the largest buffer at the floor; head + tail named.
    assert ram["layers"][0]["name"] == "model input 0"
    assert ram["layers"][0]["frozen"] == "model input"
    parts = cm.memory.ram_parts(cm.min_counts())
    assert f"{parts['tail']:,} B" in ram["fixed"] and f"{parts['head']:,} B" in ram["fixed"]
    assert budget_floor(cm, [Budget("macs", 10 ** 9)]) == []


def test_unreachable_budget_error_names_the_floor(search):
    with pytest.raises(ValueError, match="cannot hold even with one channel") as e:
        kd.freeze(search, target="stm32h743", budgets={"macs": 10, "latency_ms": 1e-6},
                  verbose=0)
    text = str(e.value)
    assert re.search(r"macs: limit 10 MACs, [\d,]+ MACs with one channel", text)
    assert "c1 (conv, searchable, at one channel)" in text
    assert "frozen: " in text and "latency_ms: limit 0.000001 ms" in text
    assert not re.search(r"\de[+-]\d", text)  # no exponent notation


def test_floor_says_why_a_layer_is_plain_in_a_searchable_model():
    # A layer kd.prepare left plain (here excluded; a layer without a channel rule next to it does
    # the same) is frozen in the searchable model: the floor points to prepare's reason, not to
    # "not kd.layers.Masked*", which reads as if the user had built the search wrongly.
    search = kd.prepare(toys.randomize_bn(toys.plain_cnn()), exclude=["c1"])
    cm = CostModel(search.dnas_plan, "stm32h743")
    (row,) = budget_floor(cm, [Budget("macs", 10)])
    frozen = {layer["name"]: layer["frozen"] for layer in row["layers"]}
    assert "kd.prepare left it unmasked" in frozen["c1"]
    assert "Masked*" not in frozen["c1"]


def test_flash_floor_names_an_embedding_table():
    # The table of an Embedding (no channel rule) is most of the flash floor: the message names
    # it with its parameters; it read as the flatbuffer's "fixed part" before.
    import keras

    L = keras.layers
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((40,), dtype="int32"), L.Embedding(1000, 16, name="table"),
        L.Conv1D(8, 3, activation="relu"), L.GlobalAveragePooling1D(), L.Dense(2)])
    search = kd.prepare(model)
    plan = search.dnas_plan
    cm = CostModel(plan, "stm32h743", memory=MemoryModel.from_model(search, plan,
                                                                    target="stm32h743"))
    text = describe_floor(cm, [Budget("flash_bytes", 1000)])
    assert re.search(r"table \(other, frozen: [^)]*\) 16,000 parameters", text), text
    fixed = int(re.search(r"([\d,]+) B of it is the flatbuffer's fixed part", text)[1]
                .replace(",", ""))
    assert fixed < 16_000
