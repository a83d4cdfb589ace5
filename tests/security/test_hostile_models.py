"""Hostile model files (issue 11, "Safe model loading", "Exit codes").

- A crafted ``.pt2`` must not run code: each place where ``torch.export.load`` (torch
  2.13) would run something from the archive gets a file whose payload creates a marker
  file; dlac refuses it with one error line naming the file and the archive member, and
  the marker never appears.  The ``control`` test shows that torch itself does run each
  payload, so the refusals mean something.  Zip bombs and malformed archives are refused
  within bounds; legitimate archives still load and compile.
- ONNX external data is read from the model's directory, never from the working
  directory or outside the model's directory.
- A Concat with an empty initializer compiles into a binary that runs (the empty input
  adds nothing and is dropped); other empty float operands are refused.
- A factory that raises SystemExit (or any BaseException but KeyboardInterrupt) is an
  error, not exit 0.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from tests.cli_helpers import cli, error_line, ok, script_env  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from target_dlac.core.errors import ModelLoadError  # noqa: E402
from compiler.frontend_onnx import from_onnx  # noqa: E402
from compiler.frontend_torch import from_pt2  # noqa: E402
from compiler.pt2_archive import PT2_MAX_MEMBERS, load_pt2  # noqa: E402
from compiler.loader import load_model  # noqa: E402
from compiler.pipeline import compile_model  # noqa: E402
from compiler.reference import run_reference  # noqa: E402
from tests.bad_models import conv_onnx  # noqa: E402

TORCH_213 = torch.__version__.startswith("2.13")


# ------------------------------------------------------------------ .pt2 building blocks

class Net(torch.nn.Module):
    """A parameter (conv), a buffer (k) and a lifted tensor constant: every payload kind."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("k", torch.full((4, 1, 1), 0.5))

    def forward(self, x):
        return torch.relu(self.conv(x)) * self.k + torch.tensor([2.0])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A legitimate .pt2 of :class:`Net` and the net."""
    torch.manual_seed(0)
    net = Net().eval()
    path = tmp_path_factory.mktemp("pt2") / "base.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(1, 3, 8, 8),)), str(path))
    return path, net


def rewrite(src, dst, replace=None, add=None, drop=(), compression=zipfile.ZIP_STORED):
    """Copy the archive ``src`` to ``dst``, with members (named without the root folder)
    replaced (bytes, or a function of the old bytes), added or dropped."""
    replace, add = replace or {}, add or {}
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", compression) as zo:
        root = zi.namelist()[0].split("/", 1)[0]
        for info in zi.infolist():
            rel = info.filename.split("/", 1)[1]
            if rel in drop:
                continue
            data = zi.read(info)
            if rel in replace:
                data = replace[rel](data) if callable(replace[rel]) else replace[rel]
            zo.writestr(f"{root}/{rel}", data)
        for rel, data in add.items():
            zo.writestr(f"{root}/{rel}", data)
    return dst


def edit_json(fn):
    def edit(data):
        d = json.loads(data)
        fn(d)
        return json.dumps(d).encode()
    return edit


def rename_value(old, new):
    """Rename a graph value everywhere in models/model.json."""
    def walk(o):
        if isinstance(o, dict):
            return {(new if k == old else k): walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return new if o == old else o
    return lambda data: json.dumps(walk(json.loads(data))).encode()


class Touch:
    """Unpickling this creates the marker file (``open(marker, "w")``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def raw_pickle(marker) -> bytes:
    return pickle.dumps(Touch(marker), protocol=2)


def torch_saved(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


WCFG, CCFG = "data/weights/model_weights_config.json", "data/constants/model_constants_config.json"
MODEL, SAMPLE = "models/model.json", "data/sample_inputs/model.pt"


def _use_pickle(fqn):
    def edit(d):
        d["config"][fqn]["use_pickle"] = True
    return edit_json(edit)


def _constant_kind(prefix):
    def edit(d):
        d["config"]["lifted_tensor_0"].update(path_name=f"{prefix}0", use_pickle=True)
    return edit_json(edit)


def _sym_expr(marker):
    def edit(d):
        d["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0] = {
            "as_expr": {"expr_str": f"open('{marker}', 'w')", "hint": {"as_int": 1}}}
    return edit_json(edit)


def _enum_context(module):
    def edit(d):
        sig = d["graph_module"]["module_call_graph"][0]["signature"]
        spec = json.loads(sig["in_spec"])
        spec[1]["children_spec"][1]["context"] = json.dumps(
            [{"__enum__": True, "fqn": f"{module}:E", "name": "A"}])
        sig["in_spec"] = json.dumps(spec)
    return edit_json(edit)


def _node_target(d):
    node = d["graph_module"]["graph"]["nodes"][1]
    node["target"] = "torch.os.system"
    node["inputs"] = [{"name": "command", "arg": {"as_string": "true"}, "kind": 1}]


def _legacy_format(base_path, dst, marker):
    """The pre-2.7 layout torch.export.load falls back to: pickles at the top level."""
    from torch._export.serde.schema import SCHEMA_VERSION

    with zipfile.ZipFile(base_path) as z:
        program = z.read(z.namelist()[0].split("/")[0] + "/" + MODEL)
    with zipfile.ZipFile(dst, "w") as zo:
        zo.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
        zo.writestr("serialized_exported_program.json", program)
        for name in ("state_dict", "constants", "example_inputs"):
            zo.writestr(f"serialized_{name}.pt", raw_pickle(marker))
    return dst


#: name -> (build(base, dst, marker, probe_module) -> path, fragment of the error, member,
#:          does torch.export.load (+ .module()) run the payload?)
CASES = {
    # torch.load(weights_only=False) of a pickled weight / constant (_load_state_dict,
    # _load_constants): a raw pickle and a torch.save zip whose pickle names open()
    "weight_pickle": (lambda b, d, m, p: rewrite(b, d, {WCFG: _use_pickle("conv.weight"),
                                                        "data/weights/weight_0": raw_pickle(m)}),
                      "not a torch.save zip archive", "data/weights/weight_0", True),
    "weight_torch_save": (lambda b, d, m, p: rewrite(b, d, {WCFG: _use_pickle("conv.weight"),
                                                            "data/weights/weight_0": torch_saved(Touch(m))}),
                          "refers to io.open", "data/weights/weight_0:", True),
    "constant_pickle": (lambda b, d, m, p: rewrite(b, d, {CCFG: _use_pickle("lifted_tensor_0"),
                                                          "data/constants/tensor_0": raw_pickle(m)}),
                        "not a torch.save zip archive", "data/constants/tensor_0", True),
    # pickle.loads of an opaque constant; torch._C._pickle_load_obj of a custom object
    "opaque_constant": (lambda b, d, m, p: rewrite(b, d, {CCFG: _constant_kind("opaque_obj_")},
                                                   {"data/constants/opaque_obj_0": raw_pickle(m)}),
                        "opaque Python object", "data/constants/opaque_obj_0", True),
    "custom_obj_constant": (lambda b, d, m, p: rewrite(b, d, {CCFG: _constant_kind("custom_obj_")},
                                                       {"data/constants/custom_obj_0": raw_pickle(m)}),
                            "TorchScript custom object", "data/constants/custom_obj_0", False),
    # the example inputs: weights_only=True fails, torch retries with weights_only=False
    "sample_inputs_raw": (lambda b, d, m, p: rewrite(b, d, {SAMPLE: raw_pickle(m)}),
                          "not a torch.save zip archive", SAMPLE, True),
    "sample_inputs_torch_save": (lambda b, d, m, p: rewrite(b, d, {SAMPLE: torch_saved(((Touch(m),), {}))}),
                                 "refers to io.open", SAMPLE + ":", True),
    # legacy members and the legacy format: bytes handed to the same fallback
    "legacy_weights": (lambda b, d, m, p: rewrite(b, d, add={"data/weights/model.pt": raw_pickle(m)}),
                       "legacy pickled weights", "data/weights/model.pt", True),
    "legacy_constants": (lambda b, d, m, p: rewrite(b, d, add={"data/constants/model.pt": raw_pickle(m)}),
                         "legacy pickled weights", "data/constants/model.pt", True),
    "legacy_format": (lambda b, d, m, p: _legacy_format(b, d, m),
                      "pre-2.7 torch.export format", None, True),
    # AOTInductor shared libraries in the archive are dlopen'ed by load_pt2
    "aotinductor": (lambda b, d, m, p: rewrite(b, d, add={"data/aotinductor/model/model.so": b"\x7fELF"}),
                    "AOTInductor", "data/aotinductor/model/model.so", False),
    # strings of models/model.json that become code
    "sym_expr_eval": (lambda b, d, m, p: rewrite(b, d, {MODEL: _sym_expr(m)}),
                      "symbolic expression", MODEL, True),
    "placeholder_name": (lambda b, d, m, p: rewrite(b, d, {MODEL: rename_value(
        "c_lifted_tensor_0", f"c, *_a, _d=open('{m}', 'w')")}), "is not an identifier", MODEL, True),
    "treespec_enum_import": (lambda b, d, m, p: rewrite(b, d, {MODEL: _enum_context(p)}),
                             "pytree context", MODEL, True),
    "node_target": (lambda b, d, m, p: rewrite(b, d, {MODEL: edit_json(_node_target)}),
                    "node target 'torch.os.system'", MODEL, False),
    "fqn_quote": (lambda b, d, m, p: rewrite(b, d, {MODEL: rename_value("conv.weight", 'conv.w"eight')}),
                  "qualified attribute name", MODEL, False),
}


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A module on sys.path whose import creates the marker (what a crafted pytree
    ``__enum__`` context would import, e.g. a file next to the model when dlac runs
    with the working directory on sys.path)."""
    marker = tmp_path / "MARKER"
    name = f"dlac_probe_{os.getpid()}_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport enum\nclass E(enum.Enum):\n    A = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


def _build(case, base, tmp_path, probe):
    build, fragment, member, _runs = CASES[case]
    name, marker = probe
    path = build(base[0], tmp_path / f"{case}.pt2", marker, name)
    return path, marker, fragment, member


@pytest.mark.parametrize("case", list(CASES))
def test_crafted_pt2_is_refused_without_running_code(case, base, tmp_path, probe):
    path, marker, fragment, member = _build(case, base, tmp_path, probe)
    with pytest.raises(ModelLoadError) as ei:
        load_model(str(path))
    msg = str(ei.value)
    assert not marker.exists(), f"{case}: the payload ran"
    assert "\n" not in msg
    assert msg.startswith(f"{path}: "), msg
    assert fragment in msg, msg
    if member is not None:
        assert "archive member '" in msg and member in msg, msg


@pytest.mark.skipif(not TORCH_213, reason="the payloads are checked against torch 2.13")
@pytest.mark.parametrize("case", [c for c, v in CASES.items() if v[3]])
def test_control_torch_export_load_runs_the_payload(case, base, tmp_path, probe):
    """torch.export.load itself (with .module(), which TVM's importer calls) runs each
    payload above: the refusals guard real code-execution paths."""
    path, marker, _, _ = _build(case, base, tmp_path, probe)
    try:
        torch.export.load(str(path)).module()
    except Exception:  # noqa: BLE001 - most payloads break the load after running
        pass
    assert marker.exists(), case


def test_guards_code_is_dropped_not_run(base, tmp_path):
    """Guard code from the archive is pasted into Python source that
    ExportedProgram.module() (which TVM's importer calls) executes: a comment and a
    newline let it escape the guard function.  dlac drops it; the program still imports."""
    marker = tmp_path / "MARKER"
    guard = f"0 #\n)\nopen('{marker}', 'w')\ndef _f():\n  (0"
    path = rewrite(base[0], tmp_path / "guard.pt2", {MODEL: edit_json(
        lambda d: d.update(guards_code=[guard]))})
    if TORCH_213:                                    # control: torch runs it
        torch.export.load(str(path)).module()
        assert marker.exists()
        marker.unlink()
    imported = from_pt2(path)
    assert not marker.exists()
    assert imported.input_shapes == {"x": (1, 3, 8, 8)}


def test_crafted_pt2_cli_is_one_error_line(base, tmp_path, probe):
    path, marker, fragment, _ = _build("weight_pickle", base, tmp_path, probe)
    res = cli(["compile", path, "-o", tmp_path / "out.dlac"])
    line = error_line(res, exit_code=1, stdout_empty=False)
    assert fragment in line and str(path) in line
    assert not marker.exists() and not (tmp_path / "out.dlac").exists()


def test_pickle_scan_refuses_what_weights_only_would_also_refuse(base, tmp_path):
    """A torch.save zip naming a non-tensor global is refused by dlac's own scan of the
    pickle (a second line behind torch.load(weights_only=True))."""
    path = rewrite(base[0], tmp_path / "g.pt2", {SAMPLE: torch_saved(((torch.zeros(1), os.getcwd), {}))})
    with pytest.raises(ModelLoadError, match=r"refers to posix\.getcwd.*data\.pkl"):
        load_pt2(str(path))


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


# ----------------------------------------------------------------- ONNX external data

@pytest.fixture
def external(tmp_path):
    """conv_onnx() saved with its weights in model/w.bin; and an unrelated working dir."""
    mdir, cwd = tmp_path / "model", tmp_path / "elsewhere"
    mdir.mkdir()
    cwd.mkdir()
    path = mdir / "m.onnx"
    onnx.save_model(conv_onnx(), str(path), save_as_external_data=True, location="w.bin",
                    size_threshold=0)
    assert (mdir / "w.bin").exists()
    return path, cwd


def _relocate(path, dst, **fields):
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key in fields:
                e.value = str(fields[e.key])
        for k, v in fields.items():
            if k not in {e.key for e in t.external_data}:
                t.external_data.add(key=k, value=str(v))
    onnx.save(m, str(dst))
    return dst


def _reference(model_or_path, x):
    result = compile_model(model_or_path, stop_after="import")
    (y,) = run_reference(result.reference_module("import"), {"x": x})
    return y


def test_external_data_is_read_from_the_models_directory(external, monkeypatch):
    path, cwd = external
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    expect = _reference(conv_onnx(), x)
    monkeypatch.chdir(cwd)
    assert np.array_equal(_reference(str(path), x), expect)
    # a same-named decoy in the working directory is not used
    (cwd / "w.bin").write_bytes(np.random.default_rng(1).bytes((path.parent / "w.bin").stat().st_size))
    assert np.array_equal(_reference(str(path), x), expect)


@pytest.mark.parametrize("kind, fragment", [
    ("dotdot", "leads out of the model's directory ('..')"),
    ("absolute", "is not a relative file name"),
    ("symlink", "leads out of the model's directory (through a symbolic link)"),
    ("directory", "is not a regular file"),
    ("missing", "names no file"),
    ("beyond", "beyond the file's"),
    ("length", "the tensor (dims [4, 3, 3, 3]) needs 432"),
])
def test_external_data_outside_or_out_of_bounds_is_refused(external, kind, fragment):
    path, cwd = external
    mdir = path.parent
    outside = cwd / "w.bin"
    outside.write_bytes((mdir / "w.bin").read_bytes())
    loc = {"dotdot": "../elsewhere/w.bin", "absolute": str(outside), "symlink": "link.bin",
           "directory": "sub", "missing": "nope.bin"}.get(kind)
    if kind == "symlink":
        os.symlink(outside, mdir / "link.bin")
    if kind == "directory":
        (mdir / "sub").mkdir()
    fields = {"location": loc} if loc else {}
    if kind == "beyond":
        fields["offset"] = 10_000
    if kind == "length":
        fields = {"offset": 0, "length": 4}
    bad = _relocate(path, mdir / "bad.onnx", **fields)
    with pytest.raises(ModelLoadError) as ei:
        from_onnx(str(bad))
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: initializer 'W': external data location"), msg
    assert fragment in msg, msg


def test_external_data_of_an_in_memory_model_is_refused(external):
    path, _ = external
    m = onnx.load(str(path), load_external_data=False)
    with pytest.raises(ModelLoadError, match="initializer 'W': external data location 'w.bin' cannot be resolved"):
        from_onnx(m)


# ------------------------------------------------------------------ empty initializers

def _dlac(*args, cwd):
    return subprocess.run([sys.executable, "-m", "compiler.cli", *map(str, args)], cwd=cwd,
                          env=script_env(), capture_output=True, text=True, timeout=300)


def _concat_model(nodes, inits, out_shape=(1, 3, 4, 4)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def _empty(name="empty", shape=(1, 0, 4, 4)):
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


@pytest.mark.slow
def test_concat_with_an_empty_initializer_compiles_and_runs(tmp_path):
    m = _concat_model([helper.make_node("Concat", ["x", "empty"], ["c"], axis=1, name="cat0"),
                       helper.make_node("Relu", ["c"], ["y"], name="relu0")], [_empty()])
    onnx.save(m, str(tmp_path / "cat.onnx"))
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = _dlac("compile", "cat.onnx", "-o", "cat.dlac", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _dlac("run", "cat.dlac", "--input", "x.npy", "--check", "--output", "y.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    with np.load(tmp_path / "y.npz") as z:
        (y,) = [z[k] for k in z.files]
    assert np.array_equal(y, np.maximum(x, 0))


@pytest.mark.parametrize("case, fragment", [
    ("all_empty", "node cat0 (Concat): every input is an empty initializer"),
    ("add_empty", "node add0 (Add) reads the empty initializer 'empty' (dims [1, 0, 4, 4])"),
    ("concat_wrong_axis", "node cat0 (Concat) reads the empty initializer 'empty'"),
])
def test_other_empty_operands_are_refused(tmp_path, case, fragment):
    nodes = {
        "all_empty": [helper.make_node("Concat", ["empty", "e2"], ["c"], axis=1, name="cat0"),
                      helper.make_node("Add", ["x", "c"], ["y"], name="add0")],
        "add_empty": [helper.make_node("Add", ["x", "empty"], ["y"], name="add0")],
        "concat_wrong_axis": [helper.make_node("Concat", ["x", "empty"], ["y"], axis=2, name="cat0")],
    }[case]
    m = _concat_model(nodes, [_empty(), _empty("e2")])
    path = tmp_path / f"{case}.onnx"
    onnx.save(m, str(path))
    with pytest.raises(ModelLoadError) as ei:
        compile_model(str(path))
    assert fragment in str(ei.value) and str(path) in str(ei.value)
    res = cli(["compile", path, "-o", tmp_path / "o.dlac"])
    assert fragment in error_line(res, exit_code=1, stdout_empty=False)


def test_empty_integer_shape_operand_is_kept(tmp_path):
    """An empty int64 initializer is a shape / index list (here: concatenated to a Shape)."""
    e = numpy_helper.from_array(np.zeros((0,), np.int64), "e")
    m = _concat_model([helper.make_node("Shape", ["x"], ["s"], name="shape0"),
                       helper.make_node("Concat", ["s", "e"], ["s2"], axis=0, name="cat0"),
                       helper.make_node("Reshape", ["x", "s2"], ["y"], name="reshape0")], [e])
    result = compile_model(m, stop_after="import")
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    (y,) = run_reference(result.reference_module("import"), {"x": x})
    assert np.array_equal(y, x)


# --------------------------------------------------------------------- factory exits

FACTORY = '''
import sys, torch

class Boom(BaseException):
    pass

def exits():
    raise SystemExit(0)

def exits_quietly():
    sys.exit()

def base_exception():
    raise Boom("not an Exception")

def interrupted():
    raise KeyboardInterrupt
'''


@pytest.fixture
def factories(tmp_path):
    path = tmp_path / "fac.py"
    path.write_text(FACTORY)
    return path


@pytest.mark.parametrize("name, fragment", [
    ("exits", "'exits()' raised SystemExit(0)"),
    ("exits_quietly", "'exits_quietly()' raised SystemExit(None)"),
    ("base_exception", "'base_exception()' raised Boom: not an Exception"),
])
def test_factory_that_exits_is_an_error(factories, tmp_path, name, fragment):
    with pytest.raises(ModelLoadError) as ei:
        load_model(f"{factories}:{name}")
    assert fragment in str(ei.value) and str(factories) in str(ei.value)
    out = tmp_path / "o.dlac"
    line = error_line(cli(["compile", f"{factories}:{name}", "-o", out]), exit_code=1, stdout_empty=False)
    assert fragment in line
    assert not out.exists()


def test_factory_file_that_exits_on_import_is_an_error(tmp_path):
    path = tmp_path / "quits.py"
    path.write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(ModelLoadError, match=r"importing the factory file failed: SystemExit\(0\)"):
        load_model(f"{path}:make")


def test_factory_keyboard_interrupt_stays_an_interrupt(factories):
    with pytest.raises(KeyboardInterrupt):
        load_model(f"{factories}:interrupted")


@pytest.mark.slow
def test_subprocess_exit_code_of_an_exiting_factory(factories, tmp_path):
    r = _dlac("compile", f"{factories}:exits", "-o", "o.dlac", cwd=tmp_path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("  stage ")]
    assert len(lines) == 1 and lines[0].startswith("dlac: error:") and "SystemExit(0)" in lines[0]
    assert not (tmp_path / "o.dlac").exists()
