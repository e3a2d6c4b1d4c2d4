"""One metric vocabulary: old spellings still work, warn naming the new one, same results."""

import warnings

import numpy as np
import pytest

import keras_dnas as kd
from keras_dnas.export.measure import MeasureResult
from keras_dnas.vocabulary import METRICS, RENAMED
from tests import toys


def test_every_old_spelling_maps_to_a_current_name():
    assert set(RENAMED.values()) <= set(METRICS)
    assert not set(RENAMED) & set(METRICS)


def test_old_budget_metric_warns_at_the_callers_line_and_is_the_same_budget():
    with pytest.warns(DeprecationWarning, match="'ram' is deprecated, use 'ram_bytes'") as rec:
        old = kd.Budget("ram", 24_000)
    assert rec[0].filename == __file__  # points at the user's code, not inside keras_dnas
    assert old == kd.Budget("ram_bytes", 24_000)
    with pytest.warns(DeprecationWarning, match="use 'flash_bytes'"):
        cb = kd.DNASCallback("stm32h743", budgets={"flash": 48_000, "macs": 10**6}, verbose=0)
    assert [b.metric for b in cb.budgets] == ["flash_bytes", "macs"]
    with pytest.warns(DeprecationWarning, match="use 'flash_bytes'"):
        assert kd.Minimize("flash").metric == "flash_bytes"


@pytest.fixture(scope="module")
def searched():
    search = kd.prepare(toys.randomize_bn(toys.plain_cnn()))
    toys.close_random_masks(search, seed=1, keep=0.6)
    return search


def test_old_cost_and_result_names_give_the_same_numbers(searched):
    callback = kd.DNASCallback("stm32h743", verbose=0)  # default budgets: flash and RAM
    callback.bind(searched)
    cm, memory = callback.cost_model, callback.cost_model.memory
    counts = cm.full_counts()
    new = cm.evaluate(counts, ["flash_bytes", "ram_bytes"])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        old = cm.evaluate(counts, ["flash", "ram"])
    assert [str(w.message) for w in rec if w.category is DeprecationWarning
            and str(w.message).startswith("keras_dnas")] == [
        "keras_dnas: 'flash' is deprecated, use 'flash_bytes'.",
        "keras_dnas: 'ram' is deprecated, use 'ram_bytes'."]
    assert old == {"flash": new["flash_bytes"], "ram": new["ram_bytes"]}

    s = kd.summary(searched, "stm32h743", memory=memory)
    with pytest.warns(DeprecationWarning, match="'arena_bytes' is deprecated, use 'ram_bytes'"):
        assert s["arena_bytes"] == s["ram_bytes"] == s["arena_head_bytes"] + s["arena_tail_bytes"]
    with pytest.warns(DeprecationWarning):
        assert s.get("arena_bytes") == s["ram_bytes"]
    assert "arena_bytes" not in s and s.get("no_such_key", 7) == 7
    with pytest.raises(KeyError):
        s["no_such_key"]

    r = MeasureResult(flash_bytes=10, ram_bytes=400)
    with pytest.warns(DeprecationWarning, match="use 'ram_bytes'"):
        assert r.arena_bytes == 400
    with pytest.raises(AttributeError):
        r.no_such_field


def test_freeze_with_old_budget_names_certifies_the_same(searched):
    x = toys.sample(searched, n=8)
    seed = kd.summary(searched, "stm32h743")
    limit = int(0.8 * seed["ram_bytes"])
    with warnings.catch_warnings():
        # the current names warn nothing
        warnings.filterwarnings("error", message="keras_dnas", category=DeprecationWarning)
        new = kd.freeze(searched, "stm32h743", budgets={"ram_bytes": limit}, verbose=0,
                        calibration_data=x)
    with pytest.warns(DeprecationWarning, match="'ram' is deprecated") as rec:
        old = kd.freeze(searched, "stm32h743", budgets={"ram": limit}, verbose=0,
                        calibration_data=x)
    assert len([w for w in rec if str(w.message).startswith("keras_dnas: ")]) == 1  # once
    assert old.dnas_certificate == new.dnas_certificate
    assert old.dnas_certificate["budgets"][0]["metric"] == "ram_bytes"
    for a, b in zip(old.get_weights(), new.get_weights()):
        np.testing.assert_array_equal(a, b)
