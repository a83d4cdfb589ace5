"""Building blocks of the hostile ``.pt2`` tests (tests/security/test_hostile_pt2*.py):
a net with every payload kind and the archive surgery that plants payloads in it (the
legitimate archive is the ``base`` fixture of tests/security/conftest.py)."""

from __future__ import annotations

import json
import pickle
import zipfile

import pytest

torch = pytest.importorskip("torch")

TORCH_213 = torch.__version__.startswith("2.13")


class Net(torch.nn.Module):
    """A parameter (conv), a buffer (k) and a lifted tensor constant: every payload kind."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("k", torch.full((4, 1, 1), 0.5))

    def forward(self, x):
        return torch.relu(self.conv(x)) * self.k + torch.tensor([2.0])


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
