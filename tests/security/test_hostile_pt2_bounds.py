"""Hostile model files (issue 11, "Safe model loading"): zip bombs and malformed ``.pt2``
archives are refused within bounds; legitimate archives still load and compile.
"""

from __future__ import annotations

import re
import warnings
import zipfile

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from tests.cli_helpers import cli, ok  # noqa: E402

from target_dlac.core.errors import ModelLoadError  # noqa: E402
from compiler.frontend_torch import from_pt2  # noqa: E402
from compiler.pt2_archive import PT2_MAX_MEMBERS, load_pt2  # noqa: E402
from compiler.reference import run_reference  # noqa: E402
from tests.security.pt2_builders import (  # noqa: E402
    SAMPLE, WCFG, Net, _use_pickle, edit_json, rewrite, torch_saved)


# ------------------------------------------------------------------- bounds, zip bombs

def _zeros_member(zo, name, nbytes):
    with zo.open(name, "w") as f:
        chunk = b"\0" * (1 << 20)
        for _ in range(nbytes >> 20):
            f.write(chunk)


def test_zip_bomb_member_is_refused(base, tmp_path):
    path = rewrite(base[0], tmp_path / "bomb.pt2")
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zo:
        _zeros_member(zo, "base/extra/bomb", 128 << 20)          # 128 MiB in ~130 KB
    assert path.stat().st_size < 2 << 20
    with pytest.raises(ModelLoadError, match=r"unpacks to more than \d+ bytes.*extra/bomb"):
        load_pt2(str(path))


def test_zip_bomb_inside_the_example_inputs_is_refused(base, tmp_path):
    import io

    inner = io.BytesIO(torch_saved(((torch.zeros(4),), {})))
    with zipfile.ZipFile(inner, "a", zipfile.ZIP_DEFLATED) as zo:
        _zeros_member(zo, "archive/data/1", 64 << 20)             # 64 MiB in ~65 KB
    path = rewrite(base[0], tmp_path / "ibomb.pt2", {SAMPLE: inner.getvalue()})
    with pytest.raises(ModelLoadError, match=r"unpacks to more than .*sample_inputs/model\.pt"):
        load_pt2(str(path))


def test_too_many_members_is_refused(base, tmp_path):
    add = {f"extra/f{i}": b"" for i in range(PT2_MAX_MEMBERS + 1)}
    path = rewrite(base[0], tmp_path / "many.pt2", add=add)
    with pytest.raises(ModelLoadError, match="archive members, more than"):
        load_pt2(str(path))


def test_empty_payload_with_huge_shape_allocates_nothing(base, tmp_path):
    """torch would torch.zeros() a 2^40-element tensor for an empty weight member."""
    def huge(d):
        meta = d["config"]["conv.weight"]["tensor_meta"]
        meta["sizes"] = [{"as_int": 1 << 40}]
        meta["strides"] = [{"as_int": 1}]
    path = rewrite(base[0], tmp_path / "huge.pt2", {WCFG: edit_json(huge), "data/weights/weight_0": b""})
    with pytest.raises(ModelLoadError, match=r"do not fit its 0 elements.*weight_0"):
        load_pt2(str(path))


def test_view_beyond_its_storage_is_refused(base, tmp_path):
    def big(d):
        d["config"]["conv.weight"]["tensor_meta"]["sizes"][0] = {"as_int": 400}
    path = rewrite(base[0], tmp_path / "oob.pt2", {WCFG: edit_json(big)})
    with pytest.raises(ModelLoadError, match=r"do not fit its 108 elements.*weight_0"):
        load_pt2(str(path))


@pytest.mark.parametrize("name, fragment", [
    ("base/../evil", "not a plain relative member name"),
    ("/base/abs", "not a plain relative member name"),
    ("base/extra/x", "holds this member twice"),
    ("other/extra/x", "not under one root folder"),
])
def test_bad_member_names_are_refused(base, tmp_path, name, fragment):
    path = rewrite(base[0], tmp_path / "names.pt2", add={"extra/x": b"1"})
    with zipfile.ZipFile(path, "a") as zo, warnings.catch_warnings():
        warnings.simplefilter("ignore")                           # zipfile: "Duplicate name"
        zo.writestr(name, b"2")
    with pytest.raises(ModelLoadError, match=re.escape(fragment)):
        load_pt2(str(path))


# ------------------------------------------------------------------ legitimate archives

def test_legit_pt2_loads_every_payload_kind(base):
    path, net = base
    ep = load_pt2(str(path))
    for k, v in net.state_dict().items():
        assert torch.equal(ep.state_dict[k], v), k
    assert isinstance(ep.state_dict["conv.weight"], torch.nn.Parameter)
    assert torch.equal(ep.constants["lifted_tensor_0"], torch.tensor([2.0]))
    assert ep.example_inputs[0][0].shape == (1, 3, 8, 8)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(ep.module()(x), net(x))


def test_legit_pt2_variants_load(base, tmp_path):
    """A plain tensor stored as a pickle (use_pickle), a re-zipped (deflated) archive with
    directory entries, and no example inputs: all fine."""
    path, net = base
    w = net.state_dict()["conv.weight"]
    p1 = rewrite(path, tmp_path / "pickled.pt2", {WCFG: _use_pickle("conv.weight"),
                                                   "data/weights/weight_0": torch_saved(w)})
    assert torch.equal(load_pt2(str(p1)).state_dict["conv.weight"], w)
    p2 = rewrite(path, tmp_path / "deflated.pt2", drop=(SAMPLE,), compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(p2, "a") as zo:
        zo.writestr("base/data/", b"")
    ep = load_pt2(str(p2))
    assert ep.example_inputs is None and torch.equal(ep.state_dict["conv.weight"], w)


def test_legit_pt2_compiles_and_runs_in_the_cli(base, tmp_path):
    path, net = base
    out = tmp_path / "m.dlac"
    ok(cli(["compile", path, "-o", out, "--quant", "none"]))
    x = torch.randn(1, 3, 8, 8)
    np.save(tmp_path / "x.npy", x.numpy())
    ok(cli(["run", out, "--input", tmp_path / "x.npy", "--check", "--output", tmp_path / "y.npz"]))
    with np.load(tmp_path / "y.npz") as z:
        (y,) = [z[k] for k in z.files]
    with torch.no_grad():
        assert np.abs(y - net(x).numpy()).max() < 1e-4


def test_dynamic_pt2_still_loads(tmp_path):
    """Symbolic sizes (Symbol('s77', positive=True, integer=True)) pass the expression check."""
    torch.manual_seed(0)
    net = Net().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(net, (torch.randn(2, 3, 8, 8),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path / "dyn.pt2"
    torch.export.save(ep, str(path))
    imported = from_pt2(path, {"x": (3, 3, 8, 8)})
    x = torch.randn(3, 3, 8, 8)
    (out,) = run_reference(imported.mod, x.numpy())
    with torch.no_grad():
        assert np.abs(out - net(x).numpy()).max() < 1e-5
