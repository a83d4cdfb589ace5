"""Hostile HOST / REF sections (issue 11): the closed graph format of target_dlac/binary/hostgraph.py.

Each attack is built with every CRC right, so it passes the container checks and reaches
the graph loader.  What must hold: no code runs from the file (a marker file is never
created), no native crash, no unbounded memory, one ``dlac: error:`` line.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

pytest.importorskip("tvm")

from target_dlac.core.errors import BinaryFormatError, CodegenError  # noqa: E402
from target_dlac.binary import hostgraph  # noqa: E402
from target_dlac.binary.container import from_bytes, to_bytes  # noqa: E402
from target_dlac.sim.host import HostRunner, reference_module, reference_outputs  # noqa: E402
from tests.cli_helpers import script_env  # noqa: E402
from tests.fuzz_helpers import _sections, rebuild  # noqa: E402
from tests.fuzz_seeds import host_blob  # noqa: E402


@pytest.fixture(scope="module")
def blob():
    return host_blob("fp32")


def _graph(data: bytes, tag: str):
    raw = zlib.decompress(_sections(data)[tag])
    (n,) = struct.unpack_from("<I", raw, 8)
    return json.loads(raw[12:12 + n]), raw[(12 + n + 15) // 16 * 16:]


def _with_graph(data: bytes, tag: str, doc, body=b"") -> bytes:
    return rebuild(data, {tag: zlib.compress(hostgraph.pack(doc, body))})


def _system_payload(marker: str):
    """A Relax module whose function runs ``touch MARKER`` through the C library's
    ``system`` (a TIR extern call): what TVM's own serialization can carry."""
    import tvm
    from tvm import relax, tirx

    buf = tirx.decl_buffer((1,), "float32", name="out")
    evil = tirx.PrimFunc([buf], tirx.Evaluate(tirx.call_extern("int32", "system", f"touch {marker}")))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1,), "float32"))
    with bb.function("host_0", [x]):
        gv = bb.add_func(evil.with_attr("global_symbol", "evil"), "evil")
        out = bb.emit(relax.call_tir(gv, [], relax.TensorType((1,), "float32")))
        bb.emit_func_output(out)
    return bb.get()


def test_the_system_payload_is_live_in_tvm(tmp_path):
    """The attack is real: TVM itself runs the payload (so refusing it below means something)."""
    import tvm
    from tvm import relax

    marker = tmp_path / "ran"
    exe = tvm.compile(_system_payload(str(marker)), target="llvm")
    relax.VirtualMachine(exe, tvm.cpu())["host_0"](tvm.runtime.tensor(np.zeros(1, np.float32)))
    assert marker.exists()


def _dlac(*args, cwd):
    return subprocess.run([sys.executable, "-m", "compiler.cli", *map(str, args)], cwd=cwd,
                          env=script_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("tag", ["HOST", "REF"])
def test_tvm_json_payload_never_runs(blob, tmp_path, tag):
    """A HOST (plain run) or REF (run --check) section holding TVM's JSON of the payload:
    refused before TVM sees it, the marker is never created, one error line."""
    import tvm

    marker = tmp_path / "ran"
    payload = zlib.compress(tvm.ir.save_json(_system_payload(str(marker))).encode())
    bad = tmp_path / "bad.dlac"
    bad.write_bytes(rebuild(blob, {tag: payload}))
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    args = ["run", bad, "--input", tmp_path / "x.npy"] + (["--check"] if tag == "REF" else [])
    r = _dlac(*args, cwd=os.getcwd())
    assert not marker.exists()
    assert r.returncode == 1, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlac: error:"), r.stderr
    assert f"section {tag}" in lines[0] and "bad magic" in lines[0]


@pytest.mark.parametrize("op", ["relax.call_tir", "relax.call_packed", "relax.call_dps_packed",
                                "relax.call_pure_packed", "relax.call_builtin_with_ctx", "relax.print"])
def test_ops_outside_the_vocabulary_are_refused(blob, op):
    doc, body = _graph(blob, "HOST")
    doc["functions"][0]["nodes"][0]["op"] = op
    p = from_bytes(_with_graph(blob, "HOST", doc, body))
    with pytest.raises(BinaryFormatError, match="closed vocabulary") as e:
        HostRunner(p)
    assert "section HOST" in str(e.value) and "host_0 node 0" in str(e.value)


def test_self_reference_and_forward_reference(blob):
    doc, body = _graph(blob, "REF")
    main = doc["functions"][-1]
    for target in (3, 4, 10 ** 9):                   # itself, a later node, nowhere
        d = json.loads(json.dumps(doc))
        d["functions"][-1]["nodes"][3]["args"][0] = ["v", target]
        with pytest.raises(BinaryFormatError, match="names no earlier node"):
            hostgraph.parse(zlib.compress(hostgraph.pack(d, body)), "REF")
    assert len(main["nodes"]) > 4


def test_self_referencing_tvm_json_is_a_format_error(blob):
    """The 60-byte self-referencing TVM JSON graph that segfaulted ``load_json``."""
    evil = b'{"root":1,"nodes":[{"type_key":""},{"type_key":"relax.expr.Tuple","data":{"fields":1}}]}'
    p = from_bytes(rebuild(blob, {"HOST": zlib.compress(evil)}))
    with pytest.raises(BinaryFormatError, match="bad magic"):
        HostRunner(p)


def test_calls_only_to_earlier_functions(blob):
    doc, body = _graph(blob, "HOST")
    doc["functions"][0]["nodes"][0] = {"call": 0, "args": [["p", 0]]}      # itself: recursion
    with pytest.raises(BinaryFormatError, match="only functions defined before"):
        hostgraph.parse(zlib.compress(hostgraph.pack(doc, body)), "HOST")


def test_zlib_bomb_is_capped(monkeypatch):
    """Decompression stops at the limit: a bomb never expands past it."""
    monkeypatch.setattr(hostgraph.vocabulary, "LIMITS", hostgraph.Limits(decompressed=1 << 20))
    bomb = zlib.compress(b"\0" * (64 << 20), 9)          # 64 MiB from ~64 KB
    with pytest.raises(BinaryFormatError, match="more than 1048576 bytes"):
        hostgraph.inflate(bomb, "REF")
    assert hostgraph.inflate(zlib.compress(b"\0" * 1000), "REF") == b"\0" * 1000


@pytest.mark.slow
def test_a_real_size_bomb_in_a_binary_uses_bounded_memory(blob, tmp_path):
    """A 1 GiB zlib bomb (1 MB compressed) in REF: one error line, peak memory far below it."""
    code = (
        "import resource, sys, zlib\n"
        "from target_dlac.core.errors import DlacError\n"
        "from target_dlac.binary.container import from_bytes\n"
        "from target_dlac.sim.host import reference_module\n"
        "p = from_bytes(open(sys.argv[1], 'rb').read())\n"
        "try:\n"
        "    reference_module(p)\n"
        "except DlacError as e:\n"
        "    print('ERR', e)\n"
        "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')]\n"
        "print('RSS', hwm[0].split()[1] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    # peak resident memory in KiB: VmHWM is this process's own (ru_maxrss carries over the
    # high-water mark of the pytest worker that started it); the 1 GiB bomb must stop at the cap
    comp = zlib.compressobj(9)
    chunk = b"\0" * (16 << 20)
    bomb = b"".join(comp.compress(chunk) for _ in range(64)) + comp.flush()
    path = tmp_path / "bomb.dlac"
    path.write_bytes(rebuild(blob, {"REF": bomb}))
    r = subprocess.run([sys.executable, "-c", code, str(path)], env=script_env(), capture_output=True,
                       text=True, timeout=120)
    assert "ERR" in r.stdout and "decompresses to more than" in r.stdout, r.stdout + r.stderr
    rss_kib = int(r.stdout.split("RSS")[1])
    assert rss_kib < (hostgraph.LIMITS.decompressed >> 10) + (200 << 10)    # the cap + Python, NumPy


CONV = {"op": "relax.nn.conv2d", "args": [["p", 0], ["c", 0]],
        "attrs": {"type": "relax.attrs.Conv2DAttrs", "fields": {
            "strides": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1,
            "data_layout": "NCHW", "kernel_layout": "OIHW", "out_layout": "NCHW", "out_dtype": None}}}


def _conv_section(fields=None, shape=(1, 4, 8, 8), wshape=(4, 4, 3, 3), node=None):
    node = node or json.loads(json.dumps(CONV))
    node["attrs"]["fields"].update(fields or {})
    w = np.ones(wshape, np.float32)
    doc = {"functions": [{"name": "main", "params": [{"name": "x", "shape": list(shape), "dtype": "float32"}],
                          "nodes": [node], "output": ["v", 0]}],
           "constants": [{"shape": list(wshape), "dtype": "float32", "offset": 0}]}
    return zlib.compress(hostgraph.pack(doc, w.tobytes()))


def test_a_valid_hand_written_section_builds_and_runs():
    from compiler.reference import run_reference

    mod = hostgraph.decode(_conv_section(), "REF")
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    out = run_reference(mod, {"x": x})[0]
    import torch
    expect = torch.nn.functional.conv2d(torch.from_numpy(x), torch.ones(4, 4, 3, 3), padding=1).numpy()
    assert np.abs(out - expect).max() <= 1e-4 * np.abs(expect).max()


@pytest.mark.parametrize("fields, message", [
    ({"strides": [0, 1]}, "strides"),
    ({"strides": [1]}, "strides"),
    ({"padding": [-1, 0, 0, 0]}, "padding"),
    ({"dilation": [1, 2 ** 40]}, "dilation"),
    ({"groups": 0}, "groups"),
    ({"groups": True}, "groups"),
    ({"data_layout": "NHWC"}, "data_layout"),
    ({"kernel_layout": "OIHW\n"}, "kernel_layout"),
    ({"out_dtype": "handle"}, "out_dtype"),
    ({"out_dtype": ["float32"]}, "out_dtype"),
    ({"extra": 1}, "exactly the fields"),
])
def test_attributes_are_validated_before_tvm(fields, message):
    with pytest.raises(BinaryFormatError, match=message):
        hostgraph.parse(_conv_section(fields), "REF")


def test_type_errors_are_reported_by_node():
    """Shapes TVM's own type inference rejects: one error naming the node, no crash."""
    with pytest.raises(BinaryFormatError, match="node 0.*TVM rejects") as e:
        hostgraph.decode(_conv_section(wshape=(4, 5, 3, 3)), "REF")         # 5 != 4 input channels
    assert "section REF" in str(e.value)
    with pytest.raises(BinaryFormatError, match="TVM rejects"):
        hostgraph.decode(_conv_section({"groups": 3}), "REF")                # 4 channels, 3 groups


@pytest.mark.slow
def test_huge_tensors_and_work_are_refused():
    with pytest.raises(BinaryFormatError, match="elements"):
        hostgraph.parse(_conv_section(shape=(1, 4, 2 ** 15, 2 ** 15)), "REF")
    # small tensors, enormous work: 1x1024x256x256 output x (1024 x 11 x 11) per element
    big = dict(shape=(1, 1024, 256, 256), wshape=(1024, 1024, 11, 11))
    with pytest.raises(BinaryFormatError, match="work|elements|data"):
        hostgraph.decode(_conv_section({"padding": [5, 5, 5, 5]}, **big), "REF")


def test_take_fast_mode_needs_constant_in_range_indices():
    node = {"op": "relax.take", "args": [["p", 0], ["p", 1]],
            "attrs": {"type": "relax.attrs.TakeAttrs", "fields": {"axis": 0, "mode": "fast"}}}
    doc = {"functions": [{"name": "main", "params": [
        {"name": "x", "shape": [4], "dtype": "float32"}, {"name": "i", "shape": [2], "dtype": "int64"}],
        "nodes": [node], "output": ["v", 0]}], "constants": []}
    with pytest.raises(BinaryFormatError, match="constant indices"):
        hostgraph.decode(zlib.compress(hostgraph.pack(doc, b"")), "HOST")
    node["args"][1] = ["c", 0]
    doc["constants"] = [{"shape": [2], "dtype": "int64", "offset": 0}]
    with pytest.raises(BinaryFormatError, match="outside"):
        hostgraph.decode(zlib.compress(hostgraph.pack(doc, np.array([1, 9], np.int64).tobytes())), "HOST")


def test_nan_and_long_numbers_in_the_description(blob):
    doc, body = _graph(blob, "HOST")
    text = json.dumps(doc).replace('"axis": 1', '"axis": NaN', 1).encode()
    raw = hostgraph.MAGIC + struct.pack("<I", len(text)) + text
    with pytest.raises(BinaryFormatError, match="not valid JSON"):
        hostgraph.parse(zlib.compress(raw), "HOST")
    text = json.dumps(doc).replace('"axis": 1', '"axis": ' + "9" * 5000, 1).encode()
    raw = hostgraph.MAGIC + struct.pack("<I", len(text)) + text
    with pytest.raises(BinaryFormatError, match="not valid JSON"):
        hostgraph.parse(zlib.compress(raw), "HOST")


def test_host_signature_must_match_the_tensor_table(blob):
    doc, body = _graph(blob, "HOST")
    fn = next(f for f in doc["functions"] if f["nodes"] and f["nodes"][0].get("op") == "relax.nn.softmax")
    fn["params"][0]["shape"] = [1, 6]          # softmax input, really (1, 5)
    fn["nodes"][0]["attrs"]["fields"]["axis"] = 1
    p = from_bytes(_with_graph(blob, "HOST", doc, body))
    with pytest.raises(BinaryFormatError, match="tensor table"):
        HostRunner(p)


def test_encode_refuses_what_the_format_cannot_hold(tmp_path):
    with pytest.raises(CodegenError, match="call to|not a Relax function|no safe form"):
        hostgraph.encode(_system_payload(str(tmp_path / "m")), "host")
    assert not (tmp_path / "m").exists()


def test_round_trip_keeps_the_computation(blob):
    """The rebuilt REF and host graphs compute what the interpreter computes."""
    from target_dlac.sim.interpreter import run

    p = from_bytes(blob)
    x = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    outs, _ = run(p, {"x": x}, host_runner=HostRunner(p))
    ref = reference_outputs(p, {"x": x})[0]
    assert np.isfinite(ref).all()
    assert np.abs(outs["output_0"] - ref).max() <= 1e-5 * np.abs(ref).max()
    again = hostgraph.encode(reference_module(p), "reference", level=1,
                             weights=hostgraph.weight_index(p.reference))   # weights from CONSTS
    assert _graph(rebuild(blob, {"REF": again}), "REF")[0] == _graph(blob, "REF")[0]
    assert to_bytes(from_bytes(rebuild(blob, {"REF": again}))) == rebuild(blob, {"REF": again})


@pytest.mark.slow
def test_structure_aware_graph_fuzzing_has_no_escapes(tmp_path):
    """200 structure-aware HOST / REF mutations through the benchmark's subprocess harness
    (a native crash would be counted, not fatal): every input ends in a DlacError or runs."""
    out = tmp_path / "fuzz.json"
    r = subprocess.run([sys.executable, "tools/bench/fuzz_binaries.py", "--n", "200", "--no-mnist",
                        "--graph-share", "1.0", "--workers", "1", "--seed", "7", "--json", str(out)],
                       env=script_env(), capture_output=True, text=True, timeout=600)
    doc = json.loads(out.read_text())
    bad = {k: v for k, v in doc["counts"].items() if k.startswith(("UNCAUGHT", "NATIVE", "BATCH"))}
    assert not bad, (bad, doc["examples"])
    assert r.returncode == 0, r.stdout[-2000:]
    assert sum(doc["counts"].values()) == 200
    assert doc["counts"].get("ran-ok", 0) > 10                        # mutants that reach TVM and run
    assert doc["counts"].get("host:BinaryFormatError", 0) + doc["counts"].get("ref:BinaryFormatError", 0) > 50


@pytest.mark.parametrize("where, value", [
    ("output", ["tuple", []]),                  # an empty tuple confused the VM's registers
    ("output", ["float", 1.0, "float32"]),      # a scalar where a tensor is returned
    ("node", ["float", 1.0, "float32"]),        # a scalar value node
    ("node", ["shape", [1, 2]]),
])
def test_functions_hold_and_return_tensors_only(blob, where, value):
    """Found by the 100,000-input fuzzing run: REF mutants that reached TVM's VM."""
    doc, body = _graph(blob, "REF")
    f = doc["functions"][0]
    if where == "output":
        f["output"] = value
    else:
        f["nodes"].append({"value": value})
    with pytest.raises(BinaryFormatError, match="tensor"):
        hostgraph.parse(zlib.compress(hostgraph.pack(doc, body)), "REF")


def test_host_op_entries_are_complete(blob):
    """Found by fuzzing: a META host-op entry without its outputs reached the host runner."""
    from tests.fuzz_helpers import json_bytes

    meta = json.loads(_sections(blob)["META"])
    del meta["host_ops"][1]["outputs"]
    with pytest.raises(BinaryFormatError, match="host op entry 1"):
        from_bytes(rebuild(blob, {"META": json_bytes(meta)}))


def test_compile_refuses_a_graph_its_loader_would_refuse():
    """encode() loads the section back: a take with out-of-range constant indices in 'fast'
    mode (no bounds check) is a compile error, not a binary that cannot run."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    with bb.function("host_0", [x]):
        idx = relax.const(np.array([1, 7], np.int64), "int64")
        out = bb.emit(relax.Call(tvm.ir.Op.get("relax.take"), [x, idx],
                                 tvm.ir.make_node("relax.attrs.TakeAttrs", axis=0, mode="fast")))
        bb.emit_func_output(out)
    with pytest.raises(CodegenError, match="cannot be loaded back.*outside"):
        hostgraph.encode(bb.get(), "host")
