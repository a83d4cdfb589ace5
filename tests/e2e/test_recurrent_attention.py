"""Recurrent and attention layers end to end: torch ``nn.LSTM`` / ``nn.GRU`` (1-2 layers,
batch_first or not), ``nn.TransformerEncoderLayer``, a BitNet-style ternary transformer
block, and ONNX ``LSTM`` / ``GRU`` (unrolled by ``compiler/onnx_rnn.py``).

Oracles: PyTorch (``--quant none``: max rel err <= 1e-5), onnxruntime (the ONNX unrolling,
and compiled ONNX models), the TVM CPU build of the same quantized graph (default ternary),
NumPy (an activation x activation matmul) and the cost model (its cycles equal the
interpreter's).  Each model's gate / projection matmuls must be dLAC dense layers, and the
attention matmuls ``dlac.matmul`` layers (100% of the MACs on dLAC)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compiler import QuantConfig, compile_model
from compiler.build import build_program
from target_dlac.core.errors import DlacError, ModelLoadError
from target_dlac.isa.machine import Machine
from target_dlac.sim.host import HostRunner, reference_outputs
from target_dlac.sim.interpreter import run
from target_dlac.tune.costmodel import matmul_cycles
from tests.cli_helpers import cli, error_line, ok
from tests.conftest import max_rel_err, to_onnxruntime

TOL = 1e-5

#: the ternary transformer block, as a factory module for ``dlac compile FILE.py:make``
BLOCK_SRC = '''
import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class TernaryBlock(nn.Module):
    """BitNet-style: RMSNorm, attention with q/k/v/o linears, RMSNorm, ReLU^2 MLP."""

    def __init__(self, d=32, heads=4, ff=64):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.up, self.down = nn.Linear(d, ff, bias=False), nn.Linear(ff, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).view(b, t, self.h, self.dh).transpose(1, 2) for p in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(-2, -1) / self.dh ** 0.5, dim=-1)
        x = x + self.o((att @ v).transpose(1, 2).reshape(b, t, d))
        u = torch.relu(self.up(self.norm2(x)))
        return x + self.down(u * u)


def make():
    torch.manual_seed(0)
    return TernaryBlock().eval(), (torch.randn(1, 6, 32),)
'''


def _block():
    ns: dict = {}
    exec(compile(BLOCK_SRC, "ternary_block.py", "exec"), ns)     # noqa: S102 - the test's own source
    return ns["make"]()


class _Rnn(nn.Module):
    def __init__(self, cls, layers, batch_first):
        super().__init__()
        self.rnn = cls(8, 16, num_layers=layers, batch_first=batch_first)

    def forward(self, x):
        return self.rnn(x)[0]


def _rnn(cls, layers, batch_first, seq=5):
    torch.manual_seed(0)
    x = torch.randn(1, seq, 8) if batch_first else torch.randn(seq, 1, 8)
    return _Rnn(cls, layers, batch_first).eval(), (x,)


def _encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
    return layer.eval(), (torch.randn(1, 6, 32),)


def _compile_run(model, example, config):
    """(result, program, interpreter output, TVM reference output)."""
    result = compile_model(model, example, config=config)
    prog = build_program(result)
    x = {result.input_names[0]: example[0].numpy() if isinstance(example[0], torch.Tensor) else example[0]}
    outs, _ = run(prog, x, host_runner=HostRunner(prog) if prog.host is not None else None)
    return result, prog, outs["output_0"], reference_outputs(prog, x)[0]


def _torch_out(model, example):
    with torch.no_grad():
        return model(*example).numpy()


def _on_dlac(result, prog) -> dict:
    return result.placement(prog.meta["fallbacks"])


# ------------------------------------------------------------------ torch LSTM / GRU

RNN_CASES = {"lstm1_bf": (nn.LSTM, 1, True), "lstm2": (nn.LSTM, 2, False),
             "gru1": (nn.GRU, 1, False), "gru2_bf": (nn.GRU, 2, True)}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(RNN_CASES))
def test_torch_rnn_matches_pytorch_unquantized(case):
    model, example = _rnn(*RNN_CASES[case])
    result, prog, got, ref = _compile_run(model, example, QuantConfig.full_precision())
    want = _torch_out(model, example)
    assert got.shape == want.shape
    assert max_rel_err(got, want) <= TOL, case
    assert max_rel_err(got, ref) <= TOL
    pl = _on_dlac(result, prog)
    assert pl["macs"]["host"] == 0 and pl["macs"]["dlac"] > 0
    ops = {layer["op"] for layer in prog.meta["layers"]}
    assert "dense" in ops


@pytest.mark.slow
def test_torch_lstm_ternary_gates_on_dlac_match_tvm():
    model, example = _rnn(nn.LSTM, 2, True)
    result, prog, got, ref = _compile_run(model, example, QuantConfig())
    assert max_rel_err(got, ref) <= TOL
    ternary = [p for p in result.layers if p.precision == "ternary"]
    assert ternary and all(p.name.startswith("rnn.weight_") for p in ternary)
    pl = _on_dlac(result, prog)
    assert all(pl["layers"][p.var]["on"] == "dlac" for p in ternary)
    assert pl["macs"]["host"] == 0
    # quantization is visible against the float model (the check above is not vacuous)
    assert max_rel_err(got, _torch_out(model, example)) > TOL
    # without the first / last layer rule every gate matmul is ternary, on dLAC
    result, prog, got, ref = _compile_run(model, example, QuantConfig(keep_first=False, keep_last=False))
    assert max_rel_err(got, ref) <= TOL
    assert len(result.layers) == 12 and {p.precision for p in result.layers} == {"ternary"}
    assert _on_dlac(result, prog)["layer_counts"] == {"dlac": 12, "host": 0}


# ------------------------------------------------------------------ attention

@pytest.mark.slow
def test_transformer_encoder_layer_all_macs_on_dlac():
    model, example = _encoder()
    result, prog, got, ref = _compile_run(model, example, QuantConfig.full_precision())
    assert max_rel_err(got, _torch_out(model, example)) <= TOL
    assert max_rel_err(got, ref) <= TOL
    pl = _on_dlac(result, prog)
    assert pl["macs"]["host"] == 0
    assert pl["other_macs"]["dlac"] == 2 * 4 * 6 * 6 * 8     # q @ k^T and softmax @ v, 4 heads
    matmuls = [layer for layer in prog.meta["layers"] if layer["op"] == "matmul"]
    assert len(matmuls) == 2
    result, prog, got, ref = _compile_run(model, example, QuantConfig())
    assert max_rel_err(got, ref) <= TOL
    assert any(p.precision == "ternary" for p in result.layers)


@pytest.mark.slow
def test_ternary_block_python_api():
    model, example = _block()
    result, prog, got, ref = _compile_run(model, example, QuantConfig.full_precision())
    assert max_rel_err(got, _torch_out(model, example)) <= TOL
    assert max_rel_err(got, ref) <= TOL
    cfg = QuantConfig(keep_first=False, keep_last=False)
    result, prog, got, ref = _compile_run(model, example, cfg)
    assert max_rel_err(got, ref) <= TOL
    assert {p.name: p.precision for p in result.layers} == {n: "ternary" for n in "qkvo"} | \
        {"up": "ternary", "down": "ternary"}
    pl = _on_dlac(result, prog)
    assert pl["macs"]["host"] == 0 and pl["layer_counts"] == {"dlac": 6, "host": 0}


@pytest.mark.slow
def test_ternary_block_cli(tmp_path):
    (tmp_path / "block.py").write_text(BLOCK_SRC)
    model, example = _block()
    np.save(tmp_path / "x.npy", example[0].numpy())
    for quant in ("none", "ternary"):
        out = tmp_path / f"{quant}.dlac"
        res = ok(cli(["compile", f"{tmp_path / 'block.py'}:make", "-o", out, "--quant", quant]))
        assert "on dLAC: 6 of 6 conv/dense layers" in res.stdout
        assert "MACs (100.0%); on the host: 0 layer(s)" in res.stdout
        y = tmp_path / f"{quant}.npz"
        res = ok(cli(["run", out, "--input", tmp_path / "x.npy", "--check", "--output", y]))
        got = np.load(y)["output_0"]
        if quant == "none":
            assert max_rel_err(got, _torch_out(model, example)) <= TOL


# ------------------------------------------------------------------ activation x activation matmul

class _Gram(nn.Module):
    def forward(self, x):                     # both operands computed: x and a host transpose
        y = torch.relu(x)
        return y @ x.transpose(-2, -1)


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 128, 300)],
                         ids=["one_segment", "per_batch"])
def test_activation_matmul_on_dlac_matches_numpy_and_cost_model(shape):
    """(3, 5, 7): every operand on chip at once (one segment); (2, 128, 300): B is 300 KiB,
    more than INP, so each batch is a tiled layer of its own."""
    from target_dlac.codegen.matmul import one_segment

    b, m, k = shape
    fits = one_segment(b, m, k, m, Machine(), a_addr=0, b_addr=0, out_addr=0, prm_addr=0) is not None
    assert fits == (shape == (3, 5, 7))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    result = compile_model(_Gram().eval(), (torch.from_numpy(x),), config=QuantConfig.full_precision())
    prog = build_program(result)
    outs, rep = run(prog, {result.input_names[0]: x}, host_runner=HostRunner(prog))
    want = np.maximum(x, 0) @ x.transpose(0, 2, 1)
    assert max_rel_err(outs["output_0"], want) <= TOL
    (mm,) = [layer for layer in rep.layers if layer.op == "matmul"]
    assert mm.cycles == matmul_cycles((b, m, k), (b, k, m), Machine())["total"]
    assert not prog.meta["fallbacks"]


def test_tuner_says_it_skips_activation_matmuls():
    from compiler.tune import collect_layers, untuned_layers

    x = torch.randn(3, 5, 7)
    result = compile_model(_Gram().eval(), (x,), config=QuantConfig.full_precision())
    lines = untuned_layers(result)
    assert len(lines) == 1 and "activation x activation matmul" in lines[0], lines
    assert collect_layers(result, Machine()) == []


def test_broadcast_batch_matmul_stays_on_host():
    """ONNX ``MatMul`` of ``(1, 5, 7)`` and ``(3, 7, 5)`` (both computed): a broadcast batch,
    which ``dlac.matmul`` does not take; the host computes it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name, v):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(v, np.int64), name))

    nodes = [const("lo", [0]), const("hi", [1]), const("ax", [0]),
             helper.make_node("Slice", ["x", "lo", "hi", "ax"], ["a"]),
             helper.make_node("Transpose", ["x"], ["b"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "bmm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    x = np.random.default_rng(1).standard_normal((3, 5, 7)).astype(np.float32)
    result = compile_model(model, config=QuantConfig.full_precision())
    assert "matmul" in [h.op for h in result.host_ops]
    prog = build_program(result)
    outs, _ = run(prog, {result.input_names[0]: x}, host_runner=HostRunner(prog))
    assert max_rel_err(outs["output_0"], x[:1] @ x.transpose(0, 2, 1)) <= TOL


# ------------------------------------------------------------------ ONNX LSTM / GRU

def _onnx_rnn(kind, direction="forward", layout=0, lbr=0, bias=True, init=False, seq=4, batch=2,
              inp=3, hidden=5, seed=0, **attrs):
    """A one-node ONNX ``LSTM`` / ``GRU`` model with random weights (initializers)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    d = 2 if direction == "bidirectional" else 1
    g = 4 if kind == "LSTM" else 3
    inits = [numpy_helper.from_array(rng.standard_normal((d, g * hidden, inp)).astype(np.float32) * 0.5, "W"),
             numpy_helper.from_array(rng.standard_normal((d, g * hidden, hidden)).astype(np.float32) * 0.5, "R")]
    ins = ["x", "W", "R", ""]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal((d, 2 * g * hidden)).astype(np.float32), "B"))
        ins[3] = "B"
    graph_in = [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                              [seq, batch, inp] if layout == 0 else [batch, seq, inp])]
    state = [d, batch, hidden] if layout == 0 else [batch, d, hidden]
    if init:
        ins += ["", "h0"] + (["c0"] if kind == "LSTM" else [])
        graph_in += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state)
                     for n in (["h0", "c0"] if kind == "LSTM" else ["h0"])]
    outs = ["y", "yh"] + (["yc"] if kind == "LSTM" else [])
    extra = {"linear_before_reset": lbr} if kind == "GRU" else {}
    node = helper.make_node(kind, ins, outs, name="rnn", hidden_size=hidden, direction=direction,
                            layout=layout, **extra, **attrs)
    y_shape = [seq, d, batch, hidden] if layout == 0 else [batch, seq, d, hidden]
    graph = helper.make_graph([node], "rnn", graph_in,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, y_shape if o == "y" else state)
                               for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    feeds = {i.name: rng.standard_normal([v.dim_value for v in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in graph_in}
    return model, feeds


ONNX_CASES = [("LSTM", {}), ("LSTM", {"direction": "reverse"}), ("LSTM", {"direction": "bidirectional"}),
              ("LSTM", {"layout": 1, "init": True}), ("LSTM", {"bias": False, "init": True}),
              ("LSTM", {"direction": "bidirectional", "layout": 1, "init": True}),
              ("GRU", {}), ("GRU", {"lbr": 1}), ("GRU", {"direction": "reverse", "init": True}),
              ("GRU", {"direction": "bidirectional", "lbr": 1, "init": True}),
              ("GRU", {"layout": 1, "init": True}), ("GRU", {"layout": 1, "lbr": 1, "bias": False})]


@pytest.mark.parametrize("kind,kw", ONNX_CASES, ids=[f"{k}-{'-'.join(f'{a}{b}' for a, b in kw.items())}"
                                                     for k, kw in ONNX_CASES])
def test_onnx_rnn_unrolling_matches_onnxruntime(kind, kw):
    """The rewritten graph (no LSTM / GRU left) computes every output as onnxruntime's LSTM /
    GRU kernel does (layout 1: as it does on the transposed layout-0 model: same weights)."""
    from compiler.onnx_rewrite import prepare_graph

    model, feeds = _onnx_rnn(kind, **kw)
    rewritten = prepare_graph(model, "test")
    ops = {n.op_type for n in rewritten.graph.node}
    assert kind not in ops and "MatMul" in ops and "Gather" not in ops
    if kw.get("layout") == 1:     # onnxruntime has no layout 1: its layout-0 twin, transposed
        twin, _ = _onnx_rnn(kind, **dict(kw, layout=0))
        want = to_onnxruntime(twin).run(None, {k: v.swapaxes(0, 1) for k, v in feeds.items()})
        want = [want[0].transpose(2, 0, 1, 3)] + [w.swapaxes(0, 1) for w in want[1:]]
    else:
        want = to_onnxruntime(model).run(None, feeds)
    got = to_onnxruntime(rewritten).run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert max_rel_err(g, w) <= TOL


@pytest.mark.parametrize("attrs,msg", [
    ({"activations": ["Relu", "Tanh", "Tanh"]}, "not the default"),
    ({"clip": 3.0}, "clip"),
    ({"input_forget": 1}, "input_forget"),
])
def test_onnx_rnn_refusals_name_the_node(attrs, msg):
    from compiler.onnx_rewrite import prepare_graph

    model, _ = _onnx_rnn("LSTM", **attrs)
    with pytest.raises(ModelLoadError, match=msg) as e:
        prepare_graph(model, "m.onnx")
    assert "node rnn (LSTM)" in str(e.value) and isinstance(e.value, DlacError)
    assert "\n" not in str(e.value)


def test_onnx_rnn_refusal_through_the_cli(tmp_path):
    import onnx

    model, _ = _onnx_rnn("GRU", activations=["Sigmoid", "Relu"])
    onnx.save(model, tmp_path / "g.onnx")
    line = error_line(cli(["compile", tmp_path / "g.onnx", "-o", tmp_path / "g.dlac"]))
    assert "node rnn (GRU)" in line and "activations" in line


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_onnx_rnn_compiles_and_matches_onnxruntime(kind):
    model, feeds = _onnx_rnn(kind, direction="bidirectional", init=False, batch=1)
    want = to_onnxruntime(model).run(None, feeds)[0]
    result, prog, got, ref = _compile_run(model, (feeds["x"],), QuantConfig.full_precision())
    assert max_rel_err(got, want) <= TOL
    assert max_rel_err(got, ref) <= TOL
    pl = _on_dlac(result, prog)
    assert pl["macs"]["host"] == 0 and pl["layer_counts"]["dlac"] == len(result.layers) > 2


@pytest.mark.slow
def test_torch_lstm_exported_to_onnx_matches(tmp_path):
    import onnx

    model, example = _rnn(nn.LSTM, 2, True)
    path = tmp_path / "lstm.onnx"
    torch.onnx.export(model, example, str(path), dynamo=False, opset_version=17, input_names=["x"])
    m = onnx.load(str(path))
    want = to_onnxruntime(m).run(None, {"x": example[0].numpy()})[0]
    result, prog, got, ref = _compile_run(m, (example[0].numpy(),), QuantConfig.full_precision())
    assert max_rel_err(got, want) <= TOL and max_rel_err(got, _torch_out(model, example)) <= TOL
    result, prog, got, ref = _compile_run(m, (example[0].numpy(),), QuantConfig())
    assert max_rel_err(got, ref) <= TOL
    assert any(p.precision == "ternary" for p in result.layers)
