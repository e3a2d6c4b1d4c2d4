"""kd.report.write_report: self-contained HTML + JSON, numbers equal to kd.summary."""

import base64
import doctest
import json
import re
import sys
import warnings

import numpy as np
import pytest

import keras
import keras_dnas as kd

pytest.importorskip("matplotlib")
L = keras.layers
TARGET = "stm32h743"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def toy_cnn():
    x = keras.Input((8, 8, 1), name="img")
    h = L.Conv2D(8, 3, padding="same", name="conv1")(x)
    h = L.BatchNormalization(name="bn1")(h)
    h = L.ReLU(name="relu1")(h)
    h = L.Conv2D(12, 3, padding="same", activation="relu", name="conv2")(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    h = L.Dense(16, activation="relu", name="fc1")(h)
    return keras.Model(x, L.Dense(10, name="logits")(h), name="toy_cnn")


@pytest.fixture(scope="module")
def flow():
    """Seed, 2-epoch search under params and latency budgets, certified freeze (digits)."""
    keras.utils.set_random_seed(7)
    (x, y), (x_test, y_test) = kd.datasets.digits()
    x, y = x[:256], y[:256]
    seed = toy_cnn()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    seed.compile("adam", loss, metrics=["accuracy"])
    before = kd.summary(seed, TARGET, memory=None)
    budgets = {"params": int(0.6 * before["params"]),
               "latency_ms": 0.6 * before["latency_ms"]}
    search = kd.prepare(seed)
    search.compile("adam", loss, metrics=["accuracy"])
    callback = kd.DNASCallback(TARGET, budgets=budgets, verbose=0)
    with warnings.catch_warnings():  # two epochs: the budgets need not hold yet
        warnings.filterwarnings("ignore", "DNASCallback: no search epoch", UserWarning)
        search.fit(x, y, validation_data=(x_test[:128], y_test[:128]), epochs=2, batch_size=64,
                   callbacks=[callback], verbose=0)
    with warnings.catch_warnings():  # the report does not depend on the BN statistics
        warnings.filterwarnings("ignore", "keras_dnas.freeze: closing channels", UserWarning)
        frozen = kd.freeze(search, target=TARGET, budgets=budgets, verbose=0)
    plain = kd.freeze(search, budgets={})  # same search, no budgets: no certificate
    return dict(seed=seed, frozen=frozen, plain=plain, callback=callback, budgets=budgets,
                data=(x_test[:64], y_test[:64]))


def images(page):
    """Decoded PNGs of every <img>; fails if any src is not an embedded PNG."""
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == page.count("<img ")
    out = []
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        out.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    return out


def test_full_report_is_self_contained_and_matches_summary(flow, tmp_path):
    path = tmp_path / "out" / "search.html"
    report = kd.report.write_report(path, seed=flow["seed"], frozen=flow["frozen"],
                                    target=TARGET, callback=flow["callback"], data=flow["data"])
    page = path.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "<link" not in page and "url(" not in page
    pngs = images(page)
    ids = [f["id"] for f in report["figures"]]
    assert ids == ["budgets", "accuracy", "channels", "costs", "search", "training"]
    assert len(pngs) == len(ids)
    for png, fig in zip(pngs, report["figures"]):
        assert png.startswith(PNG_SIGNATURE) and len(png) == fig["png_bytes"]

    on_disk = json.loads((tmp_path / "out" / "search.json").read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(report))
    s_seed = json.loads(kd.summary(flow["seed"], TARGET).to_json())
    s_frozen = json.loads(kd.summary(flow["frozen"], TARGET).to_json())
    assert on_disk["seed"] == s_seed and on_disk["frozen"] == s_frozen
    for row in s_seed["layers"] + s_frozen["layers"]:
        assert f"<code>{row['name']}</code>" in page
    for metric in flow["budgets"]:
        assert metric in page
    names = [r["name"] for r in on_disk["layers"]]
    assert names == [r["name"] for r in s_seed["layers"]]
    for row, before, after in zip(on_disk["layers"], s_seed["layers"], s_frozen["layers"]):
        assert row["channels_before"] == before["channels_kept"]
        assert row["channels_after"] == after["channels_kept"]
        for key in ("params", "macs", "cycles", "activation_bytes"):
            assert row[f"{key}_before"] == before[key] and row[f"{key}_after"] == after[key]

    keys = {"params": "params", "latency_ms": "latency_ms"}
    assert [b["metric"] for b in on_disk["budgets"]] == list(flow["budgets"])
    for b in on_disk["budgets"]:
        assert b["limit"] == flow["budgets"][b["metric"]]
        assert b["seed"] == s_seed[keys[b["metric"]]]
        assert b["final"] == s_frozen[keys[b["metric"]]]
        assert b["holds"] == (b["final"] <= b["limit"]) and b["holds"]
        assert b["seed_holds"] is False
    assert on_disk["all_budgets_hold"] is True
    assert on_disk["certificate"]["budgets"] == json.loads(
        json.dumps(flow["frozen"].dnas_certificate["budgets"]))

    acc = on_disk["accuracy"]
    assert acc["task"] == "classification" and acc["num_samples"] == 64
    for model in ("seed", "frozen"):
        assert 0.0 <= acc[model]["float_accuracy"] <= 1.0
        assert 0.0 <= acc[model]["int8_accuracy"] <= 1.0
        assert acc[model]["flash_bytes"] > 0 and acc[model]["ram_bytes"] > 0

    assert len(on_disk["history"]) == 2
    assert on_disk["history"][-1]["dnas/params"] == flow["callback"].history[-1]["dnas/params"]


def test_minimal_report_takes_budgets_from_the_certificate(flow, tmp_path):
    path = tmp_path / "r.htm"
    report = kd.report.write_report(str(path), seed=flow["seed"], frozen=flow["frozen"],
                                    target=kd.targets.get(TARGET), title="Toy <CNN> & co")
    page = path.read_text(encoding="utf-8")
    assert [f["id"] for f in report["figures"]] == ["budgets", "channels", "costs"]
    assert len(images(page)) == 3
    assert [b["metric"] for b in report["budgets"]] == list(flow["budgets"])
    assert report["accuracy"] is None and report["history"] == []
    assert "Toy &lt;CNN&gt; &amp; co" in page and "Toy <CNN>" not in page
    assert (tmp_path / "r.json").exists()


def test_explicit_budgets_and_uncertified_model(flow, tmp_path):
    plain = flow["plain"]
    seed_summary = kd.summary(flow["seed"], TARGET)
    budgets = [kd.Budget("flash_bytes", seed_summary["flash_bytes"] // 10),
               kd.Budget("macs", 10**9)]
    report = kd.report.write_report(tmp_path / "r.html", seed=flow["seed"], frozen=plain,
                                    target=TARGET, budgets=budgets)
    rows = {b["metric"]: b for b in report["budgets"]}
    assert rows["flash_bytes"]["final"] == report["frozen"]["flash_bytes"]
    assert rows["flash_bytes"]["holds"] is False and rows["macs"]["holds"] is True
    assert report["all_budgets_hold"] is False and report["certificate"] is None
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "EXCEEDED" in page and "No certificate" in page


def test_no_budgets_draws_layers_only(flow, tmp_path):
    report = kd.report.write_report(tmp_path / "r.html", seed=flow["seed"],
                                    frozen=flow["plain"], target=TARGET)
    assert [f["id"] for f in report["figures"]] == ["channels", "costs"]
    assert report["budgets"] == [] and report["all_budgets_hold"] is None


@pytest.mark.parametrize("kwargs, match", [
    ({"path": "report.txt"}, "path must end in .html"),
    ({"path": "report.json"}, "path must end in .html"),
    ({"seed": "not a model"}, "seed= must be a keras.Model"),
    ({"budgets": {"speed": 3}}, "Unknown metric"),
    ({"budgets": 3}, "budgets must be a dict"),
    ({"data": np.zeros((4, 8, 8, 1))}, "data must be a pair"),
    ({"data": (np.zeros((4, 8, 8, 1)), np.zeros(3))}, "Received: 4 samples and 3 labels"),
    ({"target": "no_such_board"}, "no_such_board"),
])
def test_invalid_arguments(flow, tmp_path, kwargs, match):
    args = dict(path=tmp_path / "r.html", seed=flow["seed"], frozen=flow["frozen"],
                target=TARGET)
    args.update(kwargs)
    path = args.pop("path")
    with pytest.raises(ValueError, match=match):
        kd.report.write_report(path, **args)


def test_missing_matplotlib_names_the_extra(flow, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"keras_dnas\[report\]"):
        kd.report.write_report(tmp_path / "r.html", seed=flow["seed"], frozen=flow["frozen"],
                               target=TARGET)
    assert not (tmp_path / "r.html").exists()


def test_docstring_examples():
    from keras_dnas.report import html

    result = doctest.testmod(html, verbose=False, report=False)
    assert result.attempted > 0 and result.failed == 0


def test_labels_of_a_model_with_several_outputs(tmp_path):
    # fit's form for a two-output model: one label array per output, by name. The report
    # scores the first output as kd.export.measure does (it read the dict as 0 labels).
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 8, 8, 1)).astype("float32")
    y = {"cls": rng.integers(0, 3, 48), "aux": rng.integers(0, 2, 48)}
    inp = keras.Input((8, 8, 1))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(inp))
    model = keras.Model(inp, {"cls": keras.layers.Dense(3, name="cls")(h),
                              "aux": keras.layers.Dense(2, name="aux")(h)})
    report = kd.report.write_report(tmp_path / "r.html", seed=model, frozen=model,
                                    target=TARGET, data=(x, y))
    tflite = kd.export.to_tflite(model, representative_data=x)
    measured = kd.export.measure(tflite, target=TARGET, data=(x, y), keras_model=model)
    assert report["accuracy"]["frozen"]["int8_accuracy"] == measured.accuracy
    assert report["accuracy"]["frozen"]["float_accuracy"] == measured.float_accuracy
    # Keras flattens a dict of outputs by sorted key: the file's first output is 'aux', and
    # the page says so (a bare "accuracy" did not say which head it was)
    assert report["accuracy"]["scored_output"] == "aux"
    assert "Scored: the first output, 'aux'." in (tmp_path / "r.html").read_text()
    with pytest.raises(ValueError, match="48 samples and 47 labels for output 'aux'"):
        kd.report.write_report(tmp_path / "r.html", seed=model, frozen=model, target=TARGET,
                               data=(x, {"cls": y["cls"], "aux": y["aux"][:47]}))


@pytest.mark.parametrize("form", ["list", "dict"])
def test_a_model_with_two_inputs(tmp_path, form):
    # data=([image, vector], y) as fit takes it: the report made one array of the inputs
    # (np.asarray of two shapes) and sliced samples off it as if there were one input
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    image, vector = keras.Input((8, 8, 1), name="image"), keras.Input((5,), name="vector")
    h = L.GlobalAveragePooling2D()(L.Conv2D(6, 3, activation="relu", name="conv")(image))
    h = L.Concatenate()([h, L.Dense(4, activation="relu", name="fc")(vector)])
    model = keras.Model([image, vector], L.Dense(3, name="logits")(h))
    xs = [rng.normal(size=(40, 8, 8, 1)).astype("float32"),
          rng.normal(size=(40, 5)).astype("float32")]
    y = rng.integers(0, 3, 40)
    x = xs if form == "list" else {"image": xs[0], "vector": xs[1]}
    report = kd.report.write_report(tmp_path / "r.html", seed=model, frozen=model,
                                    target=TARGET, data=(x, y))
    tflite = kd.export.to_tflite(model, representative_data=xs)
    measured = kd.export.measure(tflite, target=TARGET, data=(xs, y), keras_model=model)
    assert report["accuracy"]["num_samples"] == 40
    assert report["accuracy"]["frozen"]["int8_accuracy"] == measured.accuracy
    assert report["accuracy"]["frozen"]["float_accuracy"] == measured.float_accuracy
    assert report["accuracy"]["frozen"]["flash_bytes"] == len(tflite)
