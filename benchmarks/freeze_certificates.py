"""The certificates of ``freeze_speed.py``'s budgeted freezes: channels closed and reopened,
certified values and the frozen weights' shapes, to check that a faster ``freeze`` keeps the
same channels (seeded weights; the same masks and budgets as ``freeze_speed.py``).

Usage (run with each tree's ``PYTHONPATH``, then compare the two files)::

    python benchmarks/freeze_certificates.py OUT.json efficientnet_b0_48 resnet8 ds_cnn
"""

import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402

import freeze_speed as fs  # noqa: E402
import keras_dnas as kd  # noqa: E402
from keras_dnas import memory as memory_lib  # noqa: E402
from keras_dnas.costs.model import CostModel  # noqa: E402


def certificate(name):
    keras.utils.set_random_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = kd.prepare(fs.MODELS[name]())
        plan = search.dnas_plan
        memory = memory_lib.MemoryModel.from_model(search, plan, target=fs.TARGET)
        cm = CostModel(plan, fs.TARGET, memory=memory)
        metrics = ["flash_bytes", "ram_bytes", "latency_ms"]
        full, least = cm.evaluate(cm.full_counts(), metrics), cm.evaluate(cm.min_counts(), metrics)
        budgets = {m: float(least[m]) + 0.5 * (float(full[m]) - float(least[m])) for m in metrics}
        fs.close_random(search, 0.75)
        slim = kd.freeze(search, target=fs.TARGET, budgets=budgets, verbose=0)
    c = slim.dnas_certificate
    return {"removed": c["removed_channels"], "added": c["added_channels"],
            "values": {r["metric"]: float(r["value"]) for r in c["budgets"]},
            "all_hold": c["all_hold"], "weights": [list(w.shape) for w in slim.weights]}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out = {}
    for name in argv[1:]:
        out[name] = certificate(name)
        print(name, len(out[name]["removed"]), "closed,", len(out[name]["added"]), "reopened,",
              out[name]["values"], flush=True)
    with open(argv[0], "w") as f:
        json.dump(out, f, indent=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
