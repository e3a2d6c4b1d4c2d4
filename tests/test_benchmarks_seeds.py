"""`benchmarks/seeds.py`: the accuracy-over-seeds table, on small hand-made CSVs."""

import csv
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("bench_seeds",
                                               os.path.join(ROOT, "benchmarks", "seeds.py"))
seeds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seeds)

FIELDS = ["dataset", "target", "point", "method", "status", "int8_acc"]


def _write(path, accs, point="F50%/R50%/L1x", dataset="mnist"):
    """One run: {method: int8 accuracy (fraction)}, plus rows the table must ignore."""
    rows = [{"dataset": dataset, "target": "stm32h743", "point": "", "method": "seed",
             "status": "ok", "int8_acc": 0.99},
            # other targets and failed runs are not counted
            {"dataset": dataset, "target": "nrf52840", "point": point, "method": "dnas",
             "status": "ok", "int8_acc": 0.01},
            {"dataset": dataset, "target": "stm32h743", "point": "F12.5%/R12.5%/L0.5x",
             "method": "dnas", "status": "infeasible", "int8_acc": ""}]
    rows += [{"dataset": dataset, "target": "stm32h743", "point": point, "method": m,
              "status": "ok", "int8_acc": a} for m, a in accs.items()]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _row(text, point="F50%/R50%/L1x"):
    lines = [line for line in text.splitlines() if f"| {point} |" in line]
    assert len(lines) == 1, text
    return [c.strip() for c in lines[0].strip("|").split("|")]


def test_table_gives_mean_std_difference_and_win_counts(tmp_path):
    paths = [_write(tmp_path / "s0.csv", {"hand": 0.90, "l1": 0.80, "dnas": 0.92}),
             _write(tmp_path / "s1.csv", {"hand": 0.90, "l1": 0.90, "dnas": 0.89}),
             _write(tmp_path / "s2.csv", {"hand": 0.90, "l1": 0.85, "dnas": 0.95})]
    acc, runs = seeds.read(paths)
    assert runs == {"mnist": 3}
    cells = _row(seeds.table(acc, runs))
    # data set, point, seeds, hand, l1, dnas, dnas - hand, >= hand, >= l1
    assert cells[:3] == ["mnist", "F50%/R50%/L1x", "3"]
    assert cells[3] == "90.0 ± 0.0"
    assert cells[4] == "85.0 ± 5.0"
    assert cells[5] == "92.0 ± 3.0"
    # differences +2, -1, +5: mean +2.0, s.d. 3.0, s.e. 3/sqrt(3) = 1.7
    assert cells[6] == "+2.0 ± 1.7"
    assert cells[7] == "2/3"
    assert cells[8] == "2/3"  # 92 >= 80, 89 < 90, 95 >= 85
    # the infeasible point has no accuracy for any method, so no row
    assert "F12.5%" not in seeds.table(acc, runs)


def test_before_column_holds_the_earlier_runs_keras_dnas_accuracy(tmp_path):
    now = [_write(tmp_path / "n0.csv", {"hand": 0.90, "l1": 0.80, "dnas": 0.92}),
           _write(tmp_path / "n1.csv", {"hand": 0.90, "l1": 0.80, "dnas": 0.94})]
    before = [_write(tmp_path / "b0.csv", {"hand": 0.90, "l1": 0.80, "dnas": 0.86}),
              _write(tmp_path / "b1.csv", {"hand": 0.90, "l1": 0.80, "dnas": 0.88})]
    acc, runs = seeds.read(now)
    text = seeds.table(acc, runs, seeds.read(before)[0])
    assert "keras_dnas before" in text.splitlines()[0]
    cells = _row(text)
    assert cells[5] == "93.0 ± 1.4"   # keras_dnas now
    assert cells[6] == "87.0 ± 1.4"   # keras_dnas before
    assert cells[7] == "+3.0 ± 1.0"   # now - hand: +2, +4
    # earlier runs with fewer seeds than now give a dash, not a mean over other seeds
    text = seeds.table(acc, runs, seeds.read([before[0]])[0])
    assert _row(text)[6] == "-"


def test_main_prints_the_table(tmp_path, capsys):
    path = _write(tmp_path / "s0.csv", {"hand": 0.5, "l1": 0.25, "dnas": 0.75}, dataset="hapt")
    assert seeds.main([path]) == 0
    out = capsys.readouterr().out
    assert _row(out)[3:6] == ["50.0", "25.0", "75.0"]
    assert "Runs read per data set: hapt 1." in out
