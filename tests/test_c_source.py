"""C source export (`kd.export.to_c`, `keras-dnas export-c`).

Oracles: the `.tflite` bytes themselves (the C array is parsed back), the flatbuffer's operator
list, TFLite Micro's planner replay (`costs.arena.tflite_arena`) and `measure`, and, when a C++
compiler is installed, the compiled array and a mock resolver driven by the generated macro
(TFLite Micro's headers are not available here, so the macro runs against a stand-in class).
"""

import functools
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import keras
import keras_dnas as kd
from keras_dnas import cli
from keras_dnas.costs import arena
from keras_dnas.export import c_source

L = keras.layers
CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _model():
    x = keras.Input((8, 8, 2))
    h = L.Conv2D(6, 3, padding="same", activation="relu")(x)
    a = L.DepthwiseConv2D(3, padding="same")(h)
    h = L.Add()([h, a])
    h = L.Concatenate()([h, L.Conv2D(2, 1)(h)])
    h = L.MaxPooling2D()(h)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(x, L.Softmax()(L.Dense(3)(h)), name="toy")


@functools.lru_cache(maxsize=None)
def tflite():
    keras.utils.set_random_seed(0)
    model = _model()
    rng = np.random.default_rng(0)
    for w in model.weights:  # non-zero biases: the converter keeps every bias tensor
        w.assign(rng.normal(0.0, 0.3, w.shape).astype("float32"))
    return kd.export.to_tflite(model, representative_data=rng.random((16, 8, 8, 2), "float32"))


def _parse_array(source, name):
    body = re.search(r"g_%s\[\] = \{(.*?)\};" % name, source, re.S).group(1)
    return bytes(int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", body))


def test_to_c_writes_the_exact_bytes_ops_and_arena(tmp_path):
    data = tflite()
    out = kd.export.to_c(data, str(tmp_path), target="stm32h743")
    header, source = open(out["header"]).read(), open(out["source"]).read()
    assert out["header"].endswith("model.h") and out["source"].endswith("model.cc")
    # The array is the model, byte for byte, 16-byte aligned.
    assert _parse_array(source, "model") == data
    assert "alignas(16) const unsigned char g_model[]" in source
    assert f"const unsigned int g_model_len = {len(data)};" in source
    # The ops: every distinct operator of the flatbuffer, in order of first use.
    ops = list(dict.fromkeys(kd.export.op_names(data)))
    assert out["ops"] == ops
    assert set(ops) >= {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "CONCATENATION", "MAX_POOL_2D",
                        "MEAN", "FULLY_CONNECTED", "SOFTMAX"}
    calls = re.findall(r"\(resolver\)\.(\w+)\(\) == kTfLiteOk", header)
    assert calls == [c_source.RESOLVER_METHODS[o] for o in ops] == out["resolver_methods"]
    assert f"#define MODEL_OP_COUNT {len(ops)}" in header
    # The arena: the planner replay for 4-byte pointers, equal to measure's target arena.
    replay = arena.tflite_arena(data, pointer_bytes=4)
    measured = kd.export.measure(data, target="stm32h743")
    assert out["replay_arena_bytes"] == replay["total"] == measured.ram_bytes
    assert out["arena_head_bytes"] == replay["head"] == measured.host_arena_head_bytes
    assert out["arena_bytes"] == -(-replay["total"] // 16) * 16
    assert f"#define MODEL_ARENA_SIZE {out['arena_bytes']}" in header
    assert "constexpr size_t kArenaSize = MODEL_ARENA_SIZE;" in header


def test_to_c_arena_follows_the_target_pointer_size(tmp_path):
    data = tflite()
    host = kd.targets.get("stm32h743").replace(name="host64", pointer_bytes=8)
    out64 = kd.export.to_c(data, str(tmp_path / "a"), target=host, verify=False)
    out32 = kd.export.to_c(data, str(tmp_path / "b"), verify=False)
    assert out64["replay_arena_bytes"] == arena.tflite_arena(data, pointer_bytes=8)["total"]
    assert out32["pointer_bytes"] == 4 and out32["arena_bytes"] < out64["arena_bytes"]
    # A larger arena may be written; a smaller one is refused.
    big = kd.export.to_c(data, str(tmp_path / "c"), arena_bytes=out32["arena_bytes"] + 4096,
                         verify=False)
    assert f"#define MODEL_ARENA_SIZE {out32['arena_bytes'] + 4096}" in open(big["header"]).read()
    with pytest.raises(ValueError, match="below the .* bytes TFLite Micro's planner needs"):
        kd.export.to_c(data, str(tmp_path / "d"), arena_bytes=1024, verify=False)


def test_to_c_refuses_bad_names_and_unknown_ops(tmp_path, monkeypatch):
    data = tflite()
    for bad in ("my model", "2model", "int", ""):
        with pytest.raises(ValueError, match="C identifier"):
            kd.export.to_c(data, str(tmp_path), name=bad, verify=False)
    monkeypatch.delitem(c_source.RESOLVER_METHODS, "MEAN")
    with pytest.raises(ValueError, match=r"no registration for the operator\(s\) \['MEAN'\]"):
        kd.export.to_c(data, str(tmp_path / "x"), verify=False)
    assert not os.path.exists(tmp_path / "x")  # nothing written


def test_to_c_refuses_a_model_tflite_micro_aborts_on(tmp_path):
    x = keras.Input((4,))
    h = L.Dense(3, kernel_initializer="zeros", bias_initializer="zeros")(x)
    data = kd.export.to_tflite(keras.Model(x, L.Softmax()(h)),
                               representative_data=np.random.default_rng(0).random((16, 4),
                                                                                    "float32"))
    with pytest.raises(RuntimeError, match=r"Operator 1 \(SOFTMAX\)"):
        kd.export.to_c(data, str(tmp_path / "y"))
    assert not os.path.exists(tmp_path / "y")


MOCK_MAIN = r"""
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>
#include "kws.h"

enum TfLiteStatus { kTfLiteOk = 0, kTfLiteError = 1 };
// Stand-in for tflite::MicroMutableOpResolver: records the Add* calls the macro makes.
struct Resolver {
  std::vector<std::string> calls;
#define M(op) TfLiteStatus op() { calls.push_back(#op); return kTfLiteOk; }
  M(AddConv2D) M(AddDepthwiseConv2D) M(AddAdd) M(AddConcatenation) M(AddMaxPool2D) M(AddMean)
  M(AddFullyConnected) M(AddSoftmax) M(AddReshape) M(AddAveragePool2D) M(AddQuantize)
  M(AddDequantize) M(AddMul) M(AddPad) M(AddLogistic)
#undef M
};

int main(int argc, char** argv) {
  Resolver resolver;
  bool ok = KWS_REGISTER_OPS(resolver);
  FILE* f = std::fopen(argv[1], "wb");
  std::fwrite(g_kws, 1, g_kws_len, f);
  std::fclose(f);
  std::printf("%d %zu %u %d", ok ? 1 : 0, kws::kArenaSize, kws::kOpCount,
              static_cast<int>(reinterpret_cast<std::uintptr_t>(g_kws) % 16));
  for (const auto& c : resolver.calls) std::printf(" %s", c.c_str());
  std::printf("\n");
  return 0;
}
"""


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
def test_generated_source_compiles_and_round_trips(tmp_path):
    data = tflite()
    out = kd.export.to_c(data, str(tmp_path), name="kws", verify=False)
    (tmp_path / "main.cc").write_text(MOCK_MAIN)
    exe = tmp_path / "main"
    subprocess.run([CXX, "-std=c++11", "-Wall", "-Werror", "-o", str(exe), "main.cc", "kws.cc"],
                   cwd=tmp_path, check=True, capture_output=True)
    dump = tmp_path / "dump.bin"
    fields = subprocess.run([str(exe), str(dump)], check=True, capture_output=True,
                            text=True).stdout.split()
    assert dump.read_bytes() == data
    assert fields[:4] == ["1", str(out["arena_bytes"]), str(len(out["ops"])), "0"]
    assert fields[4:] == out["resolver_methods"]


def test_cli_export_c(tmp_path, capsys):
    path = tmp_path / "toy.tflite"
    path.write_bytes(tflite())
    assert cli.main(["export-c", str(path), "--target", "stm32h743", "--out",
                     str(tmp_path / "c"), "--name", "toy", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == "stm32h743" and out["model_bytes"] == len(tflite())
    assert _parse_array(open(tmp_path / "c" / "toy.cc").read(), "toy") == tflite()
    assert cli.main(["export-c", str(path), "--out", str(tmp_path / "c"),
                     "--name", "my model"]) == 1
    assert "C identifier" in capsys.readouterr().err
    assert cli.main(["export-c", str(path), "--target", "nope"]) == 1
    assert "Known targets" in capsys.readouterr().err


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
