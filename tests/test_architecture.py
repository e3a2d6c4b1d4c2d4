"""The package's dependency rule (README, "Architecture"): imports point one way.

Every module of `keras_dnas` is parsed (no import is executed) and every import in it is
checked, the lazy ones inside functions included. A module may import only modules of its
own layer or of a layer below it; the cost functions see plain data only; and the import
graph between modules has no cycle. A failure names the offending import (file and line).
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "keras_dnas"

# Bottom to top. A name covers the module and everything under it; the longest name wins.
# A package's ``__init__`` (its public face, e.g. ``kd.export``) has the layer of its package
# unless FACADES says otherwise.
LAYERS = [
    ("base", ["keras_dnas._keras", "keras_dnas._flatbuffer", "keras_dnas._data", "keras_dnas._ste",
              "keras_dnas._recorded", "keras_dnas.vocabulary",
              "keras_dnas.masks", "keras_dnas.targets",
              "keras_dnas.report.format", "keras_dnas.datasets",
              "keras_dnas.zoo"]),
    ("layers", ["keras_dnas.layers"]),
    ("graph", ["keras_dnas.graph"]),
    ("costs", ["keras_dnas.costs"]),
    ("objectives", ["keras_dnas.search.objectives", "keras_dnas.report.floor",
                    "keras_dnas.calibration"]),
    ("prepare, export, slicing", ["keras_dnas.prepare", "keras_dnas.choices", "keras_dnas.export",
                                   "keras_dnas.slicing"]),
    ("memory", ["keras_dnas.memory", "keras_dnas.choice_memory"]),
    ("freeze", ["keras_dnas.freeze"]),
    ("search", ["keras_dnas.search"]),
    ("qat", ["keras_dnas.qat"]),
    ("report", ["keras_dnas.report"]),
    ("cli", ["keras_dnas.cli"]),
]
# Public faces that re-export from above their package: kd.export.to_tflite_qat is qat's;
# kd.targets.calibrate is keras_dnas.calibration's (a lazy attribute: loading the target data
# of targets/target.py and registry.py, which the costs read, does not import it).
FACADES = {"keras_dnas.export": "report", "keras_dnas.targets": "objectives", "keras_dnas": "cli"}

# Costs are pure functions of plain data: the plan, channel counts, target data, a decoded
# .tflite. They never read Keras layers or models, nor the code that converts them.
COSTS_MAY_IMPORT = ("keras_dnas.costs", "keras_dnas.graph.plan", "keras_dnas.targets.target",
                    "keras_dnas.targets.registry", "keras_dnas._flatbuffer", "keras_dnas._ste",
                    "keras_dnas._recorded", "keras_dnas.vocabulary")

RANK = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}
LAYER_NAMES = [name for name, _ in LAYERS]


def _module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_package(name):
    return MODULES.get(name) is not None and MODULES[name].name == "__init__.py"


def rank(module):
    if module in FACADES:
        return LAYER_NAMES.index(FACADES[module])
    best = None
    for name in RANK:
        if (module == name or module.startswith(name + ".")) and (
                best is None or len(name) > len(best)):
            best = name
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: add it")
    return RANK[best]


def imports(module):
    """(line, imported keras_dnas module) for every import in ``module``, lazy ones included."""
    path = MODULES[module]
    package = module if _is_package(module) else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("keras_dnas")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("keras_dnas"):
                continue
            for alias in node.names:
                if base == "keras_dnas" and alias.name == "__version__":
                    continue  # anything may read the version
                sub = f"{base}.{alias.name}"
                out.append((node.lineno, sub if sub in MODULES else base))
    return out


def _edges():
    return {m: imports(m) for m in MODULES}


EDGES = _edges()


def test_every_module_has_a_layer():
    for module in MODULES:
        rank(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    bad = [f"{MODULES[module].relative_to(ROOT.parent)}:{line} imports {target} "
           f"(layer '{LAYER_NAMES[rank(target)]}' is above '{LAYER_NAMES[rank(module)]}')"
           for line, target in EDGES[module] if rank(target) > rank(module)]
    assert not bad, "imports against the dependency rule:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("keras_dnas.costs")))
def test_costs_see_plain_data_only(module):
    bad = [f"{MODULES[module].relative_to(ROOT.parent)}:{line} imports {target}"
           for line, target in EDGES[module]
           if not any(target == a or target.startswith(a + ".") for a in COSTS_MAY_IMPORT)]
    assert not bad, ("costs import only " + ", ".join(COSTS_MAY_IMPORT) + ":\n"
                     + "\n".join(bad))


def test_no_import_cycle():
    """No cycle between modules (a package's ``__init__`` only re-exports and is left out)."""
    graph = {m: sorted({t for _, t in EDGES[m] if t != m and not _is_package(t)})
             for m in MODULES if not _is_package(m)}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in graph.get(m, ()):
            if state.get(t) == "open":
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    """The parser finds an import inside a function and resolves names to modules."""
    found = dict((t, line) for line, t in imports("keras_dnas.freeze"))
    assert "keras_dnas.export.offline" in found  # imported inside freeze()
    assert all(t.startswith("keras_dnas") for t in found)


# Private Keras APIs live in keras_dnas/_keras.py only: the graph internals keras_dnas reads,
# the tracker (detaching the search state) and the optimizer's weight-decay exclusions.
PRIVATE_KERAS = ("keras.src", "_keras_history", "_nodes_by_depth", "_inbound_nodes",
                 "_outbound_nodes", "._functional", "_inputs_struct", "_outputs_struct",
                 "SafeModeScope", ".fill_in(", "._tracker", "_exclude_from_weight_decay",
                 "update_step", "_trainable_variables", "_non_trainable_variables")


def _code_lines(path):
    """Source lines outside comments (a docstring may name a Keras module)."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#", 1)[0]
        if code.strip():
            yield number, code


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "keras_dnas._keras"))
def test_private_keras_only_in_the_internals_module(module):
    path = MODULES[module]
    bad = [f"{path.relative_to(ROOT.parent)}:{n}: {code.strip()}"
           for n, code in _code_lines(path) if any(p in code for p in PRIVATE_KERAS)]
    assert not bad, "private Keras API outside keras_dnas/_keras.py:\n" + "\n".join(bad)


def test_keras_version_check():
    from keras_dnas import _keras

    _keras.check_version("3.15.1")
    _keras.check_version(f"3.{_keras.SUPPORTED_MINORS[0]}.0")
    for old in ("2.15.0", "3.4.1", "4.0.0"):
        with pytest.raises(ImportError, match=f"Keras {old} is installed"):
            _keras.check_version(old)


def test_untested_keras_minor_is_refused_unless_allowed(monkeypatch):
    from keras_dnas import _keras

    newer = f"3.{_keras.SUPPORTED_MINORS[1] + 1}.0"
    monkeypatch.delenv(_keras.ALLOW_UNTESTED_ENV, raising=False)
    with pytest.raises(ImportError, match=_keras.ALLOW_UNTESTED_ENV):
        _keras.check_version(newer)
    monkeypatch.setenv(_keras.ALLOW_UNTESTED_ENV, "1")
    with pytest.warns(UserWarning, match=f"Keras {newer} is newer"):
        _keras.check_version(newer)


def test_export_rewrites_are_scoped():
    """Each of the export's rewrites of Keras is active only inside the export and restored
    after it, also when the conversion fails."""
    import keras

    from keras_dnas import _keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the rewrites are for the TensorFlow backend")
    from keras.src.backend.tensorflow import numpy as tf_numpy
    from keras.src.ops import nn as ops_nn

    patched = [(tf_numpy, "add"), (tf_numpy, "take"), (tf_numpy, "split"),
               (ops_nn, "_layer_normalization"),
               (keras.layers.TimeDistributed, "call"), (keras.layers.UpSampling1D, "call"),
               (keras.layers.UpSampling2D, "_resize_images")]
    originals = [getattr(owner, name) for owner, name in patched]
    with pytest.raises(RuntimeError):
        with _keras.export_rewrites():
            for (owner, name), original in zip(patched, originals):
                assert getattr(owner, name) is not original, name
            raise RuntimeError("conversion failed")
    for (owner, name), original in zip(patched, originals):
        assert getattr(owner, name) is original, name
