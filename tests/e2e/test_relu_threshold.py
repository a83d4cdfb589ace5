"""ReLU thresholds end to end (issue 15, part 4): ``QuantConfig.relu_thresholds`` /
``dlac compile --relu-threshold PATTERN=T`` make the fused ReLU of the chosen layers
``x if x > T else 0`` in the compiled graph (the TVM reference) and in the binary's EPI.

On the MNIST CNN and real test images, in fp32, fp16, int8 and 4-bit activations: the
interpreter equals the TVM reference (int8: bit for bit; float: the tolerances of the other
e2e tests), the threshold changes the outputs, and a threshold of 0 gives the same binary,
byte for byte, as no threshold.  Bad input is one ConfigError line."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from compiler import QuantConfig, compile_model  # noqa: E402
from compiler.build import build_program  # noqa: E402
from compiler.reference import run_reference  # noqa: E402
from target_dlac.binary.container import to_bytes  # noqa: E402
from target_dlac.codegen.modes import intmath as Q  # noqa: E402
from target_dlac.core.errors import ConfigError  # noqa: E402
from target_dlac.isa.encoding import ACTS, bits_f, s32  # noqa: E402
from target_dlac.sim.host import reference_module  # noqa: E402
from target_dlac.sim.interpreter import Interpreter  # noqa: E402
from tests.cli_helpers import FACTORY, cli, error_line, ok  # noqa: E402

ONE = {"conv_layers.3": 0.5}
ALL = {"*": 0.5}
#: (activations, act_bits) of each build
MODES = {"fp32": ("fp32", 8), "fp16": ("fp16", 8), "int8": ("int8", 8), "int8-4bit": ("int8", 4)}
IMAGES = range(32, 36)          # after the 32 calibration images


@pytest.fixture(scope="module")
def mnist():
    from compiler.datasets import mnist_cnn, mnist_test

    x, _ = mnist_test(40)
    return {"model": mnist_cnn(), "x": x, "results": {}, "progs": {}}


def result(mnist, key: str, thresholds: dict | None):
    if key not in mnist["results"]:
        cfg = QuantConfig(relu_thresholds=thresholds) if thresholds is not None else QuantConfig()
        mnist["results"][key] = compile_model(mnist["model"], (torch.from_numpy(mnist["x"][:1]),), config=cfg)
    return mnist["results"][key]


def program(mnist, key: str, thresholds: dict | None, mode: str):
    if (key, mode) not in mnist["progs"]:
        acts, bits = MODES[mode]
        calib = {"x": mnist["x"][:32]} if acts == "int8" else None
        mnist["progs"][key, mode] = build_program(result(mnist, key, thresholds), activations=acts,
                                                  calib=calib, act_bits=bits)
    return mnist["progs"][key, mode]


def outputs(prog, x) -> tuple[list, list]:
    """(interpreter outputs, TVM reference outputs) on the images ``IMAGES``."""
    ref, interp = reference_module(prog), Interpreter(prog)
    got = [interp.run({"x": x[i:i + 1]})[0]["output_0"] for i in IMAGES]
    want = [run_reference(ref, x[i:i + 1])[0] for i in IMAGES]
    return got, want


def thresholded_epis(prog) -> list:
    return [i for i in prog.insns if i.op == "EPI" and ACTS[i.f["act"]] == "relu"
            and (s32(i.f["lo_bits"]) if i.f["dtype"] == 2 else bits_f(i.f["lo_bits"])) > 0]


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("key, thresholds", [("one", ONE), ("all", ALL)])
def test_interpreter_matches_reference_and_threshold_matters(mnist, mode, key, thresholds):
    x = mnist["x"]
    prog = program(mnist, key, thresholds, mode)
    got, want = outputs(prog, x)
    for g, w in zip(got, want):
        if MODES[mode][0] == "int8":
            assert np.array_equal(g, w), f"max abs diff {np.abs(g - w).max()}"
        else:
            tol = 1e-2 if mode == "fp16" else 1e-5
            assert np.abs(g - w).max() <= tol * np.abs(w).max()
    plain, _ = outputs(program(mnist, "none", None, mode), x)
    assert max(np.abs(g - p).max() for g, p in zip(got, plain)) > 1e-2 * max(np.abs(p).max() for p in plain)
    epis = thresholded_epis(prog)
    names = {l["name"] for l in prog.meta["layers"] if any(l["pc_start"] <= pc < l["pc_end"]
                                                            for pc in range(len(prog.insns))
                                                            if prog.insns[pc] in epis)}
    want_names = {"conv_layers.3"} if key == "one" else {"conv_layers.0", "conv_layers.3", "conv_layers.6",
                                                          "fc_layers.0"}
    if mode == "int8-4bit":     # Tq = floor(0.5 * 2^e) is 0 (plain ReLU) where a 4-bit output has e <= 0
        assert "conv_layers.3" in names and names <= want_names
    else:
        assert names == want_names
    if MODES[mode][0] != "int8":
        assert {bits_f(e.f["lo_bits"]) for e in epis} == {0.5}
    else:
        hi = 127 if MODES[mode][1] == 8 else 2 ** MODES[mode][1] - 1
        assert {s32(e.f["hi_bits"]) for e in epis} == {hi}
        # Tq = floor(0.5 * 2^e) for an integer exponent e: a power of two (or 0 -> no threshold)
        assert all(s32(e.f["lo_bits"]) & (s32(e.f["lo_bits"]) - 1) == 0 for e in epis)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fp32", "int8", "int8-4bit"])
def test_zero_threshold_is_byte_identical(mnist, mode):
    zero = program(mnist, "zero", {"conv_layers.3": 0.0, "*": 0}, mode)
    assert to_bytes(zero) == to_bytes(program(mnist, "none", None, mode))
    assert not thresholded_epis(zero)


@pytest.mark.slow
def test_threshold_values_in_the_float_graph(mnist):
    """The fold-stage graph (the fp32 reference) holds one ``where(x > 0.5, x, 0)``, for
    conv_layers.3; the graph without thresholds has none."""
    r = result(mnist, "one", ONE)
    script = r.stages["fold"].script(show_meta=False)
    assert script.count("R.where(") == 1 and "R.const(0.5, \"float32\")" in script
    assert "R.where(" not in result(mnist, "none", None).stages["fold"].script(show_meta=False)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fp32", "int8"])
def test_meta_records_the_threshold(mnist, mode):
    from target_dlac.binary.container import from_bytes

    prog = program(mnist, "one", ONE, mode)
    got = {l["name"]: l.get("relu_threshold") for l in prog.meta["layers"] if l["op"] in ("conv2d", "dense")}
    assert got == {"conv_layers.0": None, "conv_layers.3": 0.5, "conv_layers.6": None, "fc_layers.0": None,
                   "fc_layers.2": None}
    back = from_bytes(to_bytes(prog))
    assert [l.get("relu_threshold") for l in back.meta["layers"]] == [l.get("relu_threshold")
                                                                      for l in prog.meta["layers"]]


def test_relu_threshold_q():
    assert Q.relu_threshold_q(0.5, 4, 127, "layer a") == 8
    assert Q.relu_threshold_q(0.3, 5, 15, "layer a") == math.floor(0.3 * 32) == 9
    assert Q.relu_threshold_q(0.001, 3, 127, "layer a") == 0          # below one step: plain relu
    with pytest.raises(ConfigError, match=r"layer a: .*only zeros"):
        Q.relu_threshold_q(2.0, 3, 15, "layer a")                       # 16 >= 15


def test_config_validation():
    for bad in (-0.5, math.nan, math.inf, "0.5", True, None):
        with pytest.raises(ConfigError, match=r"relu threshold 'conv\*'"):
            QuantConfig(relu_thresholds={"conv*": bad})
    cfg = QuantConfig(relu_thresholds={"conv_layers.3": 0.5, "conv*": 0.25, "fc*": 0})
    assert cfg.relu_threshold_for("conv_layers.3") == 0.5          # first match wins
    assert cfg.relu_threshold_for("conv_layers.6") == 0.25
    assert cfg.relu_threshold_for("fc_layers.0") == 0.0 and cfg.relu_threshold_for("x") == 0.0
    assert cfg.to_dict()["relu_thresholds"] == {"conv_layers.3": 0.5, "conv*": 0.25}
    assert "relu_thresholds" not in QuantConfig(relu_thresholds={"*": 0}).to_dict()
    assert QuantConfig(relu_thresholds={"*": 0}).to_dict() == QuantConfig().to_dict()


def test_layer_meta_field_and_validation():
    from target_dlac.binary.layer_meta import LayerMeta, LayerMetaError
    from target_dlac.binary.validate import check_insn
    from target_dlac.isa.encoding import Insn, s32_bits
    from tests.isa_programs import fields

    d = dict(name="conv_layers.3", op="conv2d", pc_start=0, pc_end=1)
    assert LayerMeta.from_dict({**d, "relu_threshold": 0.5}).to_dict()["relu_threshold"] == 0.5
    assert "relu_threshold" not in LayerMeta.from_dict(d).to_dict()
    for bad in (0, -1.0, math.inf, "0.5", True):
        with pytest.raises(LayerMetaError, match="relu_threshold"):
            LayerMeta.from_dict({**d, "relu_threshold": bad})

    def epi(lo, hi):
        return Insn("EPI", fields("EPI", acc=0, dst=0, act=ACTS.index("relu"), prm=64, f=2, p=4, dtype=2,
                                  lo_bits=s32_bits(lo), hi_bits=s32_bits(hi)))
    sizes = {"INP": 1 << 16, "WGT": 1 << 16, "ACC": 1 << 16}
    assert check_insn(epi(8, 127), sizes, 0) is None and check_insn(epi(-37, 90), sizes, 0) is None
    assert "below its upper bound" in check_insn(epi(15, 15), sizes, 0)


# ------------------------------------------------------------------------------ CLI

@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    path = tmp_path_factory.mktemp("relu") / "tiny.py"
    path.write_text(FACTORY)
    return f"{path}:make"


@pytest.mark.parametrize("spec, needle", [
    ("conv2=-1", r"--relu-threshold 'conv2' = -1.0: expected a finite number >= 0"),
    ("conv2=nan", r"--relu-threshold 'conv2' = nan: expected a finite number >= 0"),
    ("conv2=inf", r"--relu-threshold 'conv2' = inf"),
    ("conv2=half", r"--relu-threshold 'conv2=half': threshold 'half' is not a number"),
    ("0.5", r"--relu-threshold '0.5': expected PATTERN=T"),
    ("nothing*=0.5", r"relu threshold 'nothing\*': the pattern matches no layer \(layers: conv1, conv2, conv3, fc\)"),
    ("fc=0.5", r"relu threshold 'fc': no matched layer ends in a fused ReLU \(layer fc: no activation\)"),
])
def test_cli_bad_thresholds(factory, tmp_path, spec, needle):
    line = error_line(cli(["compile", factory, "--relu-threshold", spec, "-o", tmp_path / "o.dlac"]), exit_code=2)
    assert __import__("re").search(needle, line), line
    assert not (tmp_path / "o.dlac").exists()


def test_cli_int8_threshold_above_the_range(factory, tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32))
    line = error_line(cli(["compile", factory, "--relu-threshold", "conv2=1000", "--activations", "int8",
                           "--calib", calib, "-o", tmp_path / "o.dlac"]), exit_code=2)
    assert "layer conv2: ReLU threshold 1000" in line and "only zeros" in line


def test_cli_precision_file_and_option(factory, tmp_path):
    """The [relu_threshold] table of a precision file and --relu-threshold build the same
    binary; `dlac run --check` passes on it; without it the binary differs."""
    toml = tmp_path / "p.toml"
    toml.write_text('"conv3" = "int8"\n[relu_threshold]\n"conv2" = 0.05\n')
    a, b, c = (tmp_path / f"{n}.dlac" for n in "abc")
    ok(cli(["compile", factory, "--precision", toml, "-o", a]))
    ok(cli(["compile", factory, "--precision", "conv3=int8", "--relu-threshold", "conv2=0.05", "-o", b]))
    ok(cli(["compile", factory, "--precision", "conv3=int8", "-o", c]))
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((1, 1, 16, 16)).astype(np.float32))
    assert "check" in ok(cli(["run", a, "--input", tmp_path / "x.npy", "--check"])).output
    bad = tmp_path / "bad.toml"
    bad.write_text('[relu_threshold]\n"conv2" = "high"\n')
    line = error_line(cli(["compile", factory, "--precision", bad]), exit_code=2)
    assert "[relu_threshold] 'conv2' = 'high': expected a finite number >= 0" in line
