"""tools/bench/act_skip.py on a tiny setting: the MNIST CNN on 3 real test images, fp32."""

from __future__ import annotations

import json

import numpy as np
import pytest

from target_dlac.core.errors import ConfigError
from tools.bench import act_skip

pytestmark = pytest.mark.slow
IMAGES = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("act_skip") / "out.json"
    rc = act_skip.main(["--models", "mnist", "--images", str(IMAGES), "--activations", "fp32",
                        "--json", str(out)])
    return rc, json.loads(out.read_text())


def _torch_density(n: int) -> float:
    """Mean non-zero fraction of conv_layers.3's input, from the float torch model: the
    first conv stays fp32 in the default QuantConfig, so the zeros there are the float
    ReLU's (conv_layers.6's input follows a ternary conv: not comparable)."""
    import torch

    from compiler.datasets import mnist_cnn, mnist_test

    model = mnist_cnn()
    seen: dict = {}
    hooks = [model.conv_layers[i].register_forward_hook(
        lambda m, inp, out, i=i: seen.setdefault(i, []).append(inp[0].detach().numpy())) for i in (3,)]
    x, _ = mnist_test(n)
    with torch.no_grad():
        for k in range(n):
            model(torch.from_numpy(x[k:k + 1].copy()))
    for h in hooks:
        h.remove()
    return float(np.mean([np.count_nonzero(a) / a.size for a in seen[3]]))


def test_outputs_identical_and_exit_zero(run):
    rc, data = run
    assert rc == 0
    (r,) = data["results"]
    assert r["images"] == IMAGES and r["mismatches"] == []
    assert [l["name"] for l in r["layers"]] == ["conv_layers.0", "conv_layers.3", "conv_layers.6",
                                               "fc_layers.0", "fc_layers.2"]


def test_none_is_data_independent_and_finer_skips_more(run):
    r = run[1]["results"][0]
    net = r["network"]
    assert net["none"]["cycles"]["min"] == net["none"]["cycles"]["max"]   # no zero activations skipped
    for l in r["layers"]:
        assert l["none"]["speedup_acts"] == 1.0
        assert l["none"]["speedup_weights"] == l["column"]["speedup_weights"] == l["pe"]["speedup_weights"]
        assert l["pe"]["speedup_acts"] >= l["column"]["speedup_acts"] >= 1.0
    assert net["pe"]["cycles"]["max"] <= net["column"]["cycles"]["min"] < net["none"]["cycles"]["min"]
    # the first conv reads the normalized image (no zeros): nothing to skip
    assert r["layers"][0]["column"]["act_density"] == 1.0
    assert r["layers"][0]["pe"]["speedup_acts"] == pytest.approx(1.0, abs=0.02)


def test_tflops_decomposition_is_the_report(run):
    """tflops_per_mm2 = dense peak x dense utilization x net speed-up (per run, so means
    agree to rounding only when the product is per image: check the none run, constant)."""
    n = run[1]["results"][0]["network"]["none"]
    from target_dlac.isa.area import area_mm2
    from target_dlac.isa.machine import Machine

    # the none machine has no zero-skip control: a little less than the published 2.2 mm^2
    assert n["peak_tflops_per_mm2"] == pytest.approx(2 * 512 * 500e6 / area_mm2(Machine(act_skip="none")) / 1e12)
    assert n["tflops_per_mm2"] == pytest.approx(
        n["peak_tflops_per_mm2"] * n["dense_utilization"] * n["net_speedup"], rel=1e-9)


def test_density_matches_the_torch_model(run):
    r = run[1]["results"][0]
    (got,) = [l["column"]["act_density"] for l in r["layers"] if l["name"] == "conv_layers.3"]
    want = _torch_density(IMAGES)
    assert got == pytest.approx(want, abs=1e-4)


def test_summary_lines(run, capsys):
    lines = act_skip.summary(run[1]["results"])
    text = "\n".join(lines)
    assert "Cnvlutin check, speedup_acts of conv_layers.3+conv_layers.6" in text
    assert "(Cnvlutin: 1.37x)" in text and "(paper 1)" in text


def test_differing_outputs_exit_one(monkeypatch, capsys):
    from target_dlac.sim.interpreter import Interpreter

    real = Interpreter.run

    def perturbed(self, inputs, *a, **k):
        outs, rep = real(self, inputs, *a, **k)
        if self.m.act_skip == "pe":
            outs = {n: v + 1 for n, v in outs.items()}
        return outs, rep

    monkeypatch.setattr(Interpreter, "run", perturbed)
    assert act_skip.main(["--models", "mnist", "--images", "1", "--activations", "fp32"]) == 1
    err = capsys.readouterr().err
    assert "outputs differ between granularities" in err and "'pe'" in err


def test_bad_options_are_one_line_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        act_skip.main(["--models", "mnist,vgg"])
    assert e.value.code == 2
    assert "--models 'mnist,vgg': expected a comma-separated list of mnist, resnet18, resnet34" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit):
        act_skip.main(["--images", "0"])
    assert "--images 0: expected 1..10000" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no .pt2 files there"):
        act_skip._trained_cases(str(tmp_path), 1)
    (tmp_path / "m.pt2").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"no readable compile_args in .*m\.json"):
        act_skip._trained_cases(str(tmp_path), 1)
