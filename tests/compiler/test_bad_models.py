"""Malformed and absurd models get one clear error naming what and where, quickly and
without allocating the absurd sizes: a missing initializer, a cycle, nodes out of
order, float arithmetic on int64 weights, a string input, a zero-size dimension, a
2^40-element tensor, and a
layer no tiling fits on the machine."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from tests.cli_helpers import script_env
from onnx import TensorProto, helper, numpy_helper

from compiler import QuantConfig, compile_model
from compiler.build import build_program
from target_dlac.core.errors import CodegenError, ModelLoadError
from target_dlac.isa.machine import Machine


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def _vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


X = _vi("x", [1, 3, 8, 8])
W = np.ones((4, 3, 3, 3), np.float32)


def _conv(w=None, inits=True):
    inits = [numpy_helper.from_array(W if w is None else w, "w")] if inits else []
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv0")], [X],
                  [_vi("y", [1, 4, 6, 6])], inits)


CASES = {
    "missing initializer": (_conv(inits=False), ["node conv0 (Conv)", "'w'", "missing initializer"]),
    "int64 weights": (_conv(W.astype(np.int64)), ["node conv0 (Conv)", "'w'", "int64"]),
    "cycle": (_model([helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
                      helper.make_node("Relu", ["a"], ["b"], name="n2"),
                      helper.make_node("Relu", ["a"], ["y"], name="n3")], [X], [_vi("y", [1, 3, 8, 8])]),
              ["node n1 (Add)", "'b'", "n2", "a cycle"]),
    "out of order": (_model([helper.make_node("Relu", ["a"], ["y"], name="late"),
                             helper.make_node("Relu", ["x"], ["a"], name="early")], [X],
                            [_vi("y", [1, 3, 8, 8])]),
                     ["node late (Relu)", "'a'", "early", "out of topological order"]),
    "zero-size dimension": (_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [_vi("x", [0, 3, 4])],
                                   [_vi("y", [0, 3, 4])]), ["input 'x'", "zero-size dimension", "[0, 3, 4]"]),
    "string input": (_model([helper.make_node("Identity", ["x"], ["y"], name="id")],
                            [_vi("x", [2], TensorProto.STRING)], [_vi("y", [2], TensorProto.STRING)]),
                     ["graph input 'x'", "string"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_onnx_is_a_clear_error(case):
    model, fragments = CASES[case]
    with pytest.raises(ModelLoadError) as e:
        compile_model(model, config=QuantConfig.full_precision())
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


def test_layer_no_tiling_fits_names_the_layer():
    """On a machine whose per-PE output buffer cannot hold one accumulator tile, every
    conv layer is refused at codegen, naming the layer and the buffers."""
    result = compile_model(_conv(), config=QuantConfig.full_precision())
    with pytest.raises(CodegenError, match=r"no tiling of .* fits the machine's buffers"):
        build_program(result, Machine(obuf_bytes_per_pe=2), reference=False)


_HUGE = textwrap.dedent('''
    import sys
    from onnx import TensorProto, helper
    from compiler import QuantConfig, compile_model
    from compiler.build import build_program
    from target_dlac.core.errors import DlacError
    from target_dlac.isa.machine import Machine

    big = [1, 1, 2 ** 20, 2 ** 20]                       # 2^40 float32 elements: 4 TiB
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, big)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, big)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    try:
        build_program(compile_model(m, config=QuantConfig.full_precision()), Machine(), reference=False)
        print("NO ERROR")
    except DlacError as e:
        print(type(e).__name__, e)
    # this process's own peak (ru_maxrss would carry the parent's high-water mark across exec)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
    print("MAXRSS_MB", int(hwm) // 1024)
''')


@pytest.mark.slow
def test_2_to_the_40_element_tensor_refused_without_allocating(tmp_path):
    script = tmp_path / "huge.py"
    script.write_text(_HUGE)
    env = script_env()
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("CodegenError") and "1048576" in lines[0] and "DRAM" in lines[0], lines
    rss = int(lines[-1].split()[1])
    assert rss < 2048, f"peak RSS {rss} MB"
