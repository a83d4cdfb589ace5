"""SWIS end to end: quantization in the pipeline, the SACC bit-serial instruction in the
binary, its documented cycle cost, and values against the TVM CPU reference (exact for
int8 activations)."""

from __future__ import annotations

from target_dlac.sim.host import reference_module

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from compiler import QuantConfig, compile_model  # noqa: E402
from compiler.build import build_program  # noqa: E402
from compiler.datasets import mnist_cnn, mnist_test  # noqa: E402
from compiler.reference import run_reference  # noqa: E402
from target_dlac.isa import cycles  # noqa: E402
from target_dlac.sim.interpreter import Interpreter, run  # noqa: E402
from target_dlac.isa.machine import Machine  # noqa: E402
from target_dlac.isa.blocks import unpack_swis  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return mnist_test(48)


@pytest.fixture(scope="module")
def swis3(data):
    x, _ = data
    return compile_model(mnist_cnn(), (torch.from_numpy(x[:1]),), config=QuantConfig(weights="swis"))


def _ref(prog):
    return reference_module(prog)


def test_swis_layers_and_counts(swis3):
    prec = [l.precision for l in swis3.layers]
    assert prec == ["fp32", "swis", "swis", "swis", "fp32"]
    for var, r in swis3.swis.items():
        assert r.counts.min() >= 1 and r.counts.max() <= 3
        assert r.mean_count_scheduled <= 3.0
        assert np.abs(r.values).max() <= 255


def test_swis_fp32_activations_match_reference(swis3, data):
    x, _ = data
    prog = build_program(swis3)
    assert any(i.op == "SACC" for i in prog.insns)
    ref = run_reference(swis3.reference_module("fold"), x[:1])[0]
    out = run(prog, {"x": x[:1]})[0]["output_0"]
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-5


@pytest.mark.slow
def test_swis_int8_is_exact(swis3, data):
    x, _ = data
    prog = build_program(swis3, activations="int8", calib={"x": x[:32]})
    interp, ref = Interpreter(prog), _ref(prog)
    for i in range(32, 36):
        out = interp.run({"x": x[i:i + 1]})[0]["output_0"]
        assert np.array_equal(out, run_reference(ref, x[i:i + 1])[0])


def test_sacc_cycles_follow_the_documented_cost(swis3, data):
    """Each SACC costs compute_setup + passes * G * sum over PE groups of ceil(max S / k);
    a double-shift PE (k = 2) is faster."""
    x, _ = data
    m1, m2 = Machine(), Machine(swis_shifts_per_pass=2)
    totals = []
    for m in (m1, m2):
        prog = build_program(swis3, m, reference=False)
        interp = Interpreter(prog)
        _, rep = interp.run({"x": x[:1]})
        sacc = [(pc, i) for pc, i in enumerate(prog.insns) if i.op == "SACC"]
        assert sacc
        for pc, ins in sacc:
            # the block sits in WGT at run time: decode it from the constants (the last LOAD
            # into its address before it) to get the shift counts
            load = next(l for l in reversed(prog.insns[:pc])
                        if l.op == "LOAD" and l.f["buf"] == 1 and l.f["sram"] == ins.f["wgt"])
            blk = np.frombuffer(prog.constants[load.f["dram"]:load.f["dram"] + load.f["x"]], np.uint8)
            _, counts, _ = unpack_swis(blk, 0, ins.f["f"], ins.f["c"], ins.f["kh"], ins.f["kw"])
            groups = ins.f["kh"] * ins.f["kw"] * -(-ins.f["c"] // 4)
            per = [-(-int(s) // m.swis_shifts_per_pass) for s in counts]
            pad = (-len(per)) % m.pe_cols
            per = np.array(per + [0] * pad).reshape(-1, m.pe_cols).max(axis=1).sum()
            expect = m.compute_setup + cycles.passes(ins, m) * groups * int(per)
            assert cycles.cost(ins, m, counts) == expect
        totals.append(sum(l.compute for l in rep.layers if l.precision == "swis"))
    assert totals[1] < totals[0]


def test_fractional_target_mixes_counts(data):
    x, _ = data
    r = compile_model(mnist_cnn(), (torch.from_numpy(x[:1]),),
                      config=QuantConfig(weights="swis", swis_shifts=2.5))
    counts = np.concatenate([s.counts for s in r.swis.values()])
    assert set(np.unique(counts)) <= {2, 3} and {2, 3} <= set(np.unique(counts))


def test_cli_swis(tmp_path, data):
    from click.testing import CliRunner

    from compiler.cli import main

    x, _ = data
    (tmp_path / "f.py").write_text(
        "import torch\nfrom compiler.datasets import mnist_cnn\n"
        "def make():\n    return mnist_cnn(), (torch.zeros(1, 1, 28, 28),)\n")
    np.save(tmp_path / "x.npy", x[:1])
    out = tmp_path / "m.dlac"
    res = CliRunner().invoke(main, ["compile", f"{tmp_path / 'f.py'}:make", "--quant", "swis",
                                    "--swis-shifts", "2", "--swis-consecutive", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "SACC" in res.output
    res = CliRunner().invoke(main, ["run", str(out), "--input", str(tmp_path / "x.npy"), "--check"])
    assert res.exit_code == 0, res.output
