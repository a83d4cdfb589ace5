"""Hostile model files (issue 11, "Safe model loading"): crafted ``.pt2`` archives.

A crafted ``.pt2`` must not run code: each place where ``torch.export.load`` (torch
2.13) would run something from the archive gets a file whose payload creates a marker
file; dlac refuses it with one error line naming the file and the archive member, and
the marker never appears.  The ``control`` test shows that torch itself does run each
payload, so the refusals mean something.  (Bounds and legitimate archives:
test_hostile_pt2_bounds.py.)
"""

from __future__ import annotations

import os
import sys

import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from tests.cli_helpers import cli, error_line  # noqa: E402

from target_dlac.core.errors import ModelLoadError  # noqa: E402
from compiler.frontend_torch import from_pt2  # noqa: E402
from compiler.pt2_archive import load_pt2  # noqa: E402
from compiler.loader import load_model  # noqa: E402
from tests.security.pt2_builders import (  # noqa: E402
    CCFG, MODEL, SAMPLE, TORCH_213, WCFG, Touch, _constant_kind, _enum_context, _legacy_format,
    _node_target, _sym_expr, _use_pickle, edit_json, raw_pickle, rename_value, rewrite,
    torch_saved)


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
