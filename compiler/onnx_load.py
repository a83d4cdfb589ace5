"""Reading an ONNX file: refuse what is not one, and read the tensors it keeps in
external data files from the model's own directory, within a size budget (used by
:func:`compiler.frontend_onnx.from_onnx`)."""

from __future__ import annotations

import os
import re
import stat

from target_dlac.core.errors import ModelLoadError, NotOnnxError


def load_onnx(path: str | os.PathLike):
    """Parse an ONNX file, refusing anything that is not one.  Tensors kept in external
    data files are read here, from the model's own directory (:func:`inline_external_data`),
    so nothing later resolves them against the working directory."""
    import onnx
    from google.protobuf.message import DecodeError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelLoadError("no such file", where=path)
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise NotOnnxError("file is empty", where=path)
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise NotOnnxError(f"not an ONNX model (protobuf parse failed: {e})", where=path) from None
    if not model.graph.node and not model.graph.input:
        raise NotOnnxError("parsed as protobuf but holds no ONNX graph (no nodes, no inputs)", where=path)
    inline_external_data(model, path, budget=ONNX_MAX_BYTES - len(data))
    return model


#: at most this many bytes of model and external data (a protobuf message cannot be larger)
ONNX_MAX_BYTES = (2 << 30) - 1

#: bits per element of the ONNX types narrower than a byte (packed)
_SUBBYTE_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2,
                 "FLOAT6E2M3": 6, "FLOAT6E3M2": 6}


def _graph_tensors(graph, scope: str = ""):
    """(description, TensorProto) of every tensor a graph holds: initializers, sparse
    initializers, tensor attributes of its nodes, and those of its subgraphs."""
    for t in graph.initializer:
        yield f"{scope}initializer {t.name!r}", t
    for st in graph.sparse_initializer:
        yield f"{scope}sparse initializer {st.values.name!r} (values)", st.values
        yield f"{scope}sparse initializer {st.values.name!r} (indices)", st.indices
    yield from _node_tensors(graph.node, scope)


def _node_tensors(nodes, scope: str = ""):
    for i, node in enumerate(nodes):
        where = f"{scope}node {node.name or f'#{i}'} ({node.op_type})"
        for a in node.attribute:
            if a.HasField("t"):
                yield f"{where} attribute {a.name!r}", a.t
            for t in a.tensors:
                yield f"{where} attribute {a.name!r}", t
            if a.HasField("sparse_tensor"):
                yield f"{where} attribute {a.name!r} (values)", a.sparse_tensor.values
                yield f"{where} attribute {a.name!r} (indices)", a.sparse_tensor.indices
            for st in a.sparse_tensors:
                yield f"{where} attribute {a.name!r} (values)", st.values
                yield f"{where} attribute {a.name!r} (indices)", st.indices
            if a.HasField("g"):
                yield from _graph_tensors(a.g, f"{where} subgraph {a.name!r}: ")
            for g in a.graphs:
                yield from _graph_tensors(g, f"{where} subgraph {a.name!r}: ")


def _all_tensors(model):
    yield from _graph_tensors(model.graph)
    for f in model.functions:
        yield from _node_tensors(f.node, f"function {f.name!r}: ")


def _tensor_nbytes(t) -> int | None:
    """Bytes of ``t``'s data (from its dims and element type), or None if unknown."""
    from onnx import TensorProto, helper

    numel = 1
    for d in t.dims:
        if d < 0:
            return None
        numel *= d
    name = TensorProto.DataType.Name(t.data_type) if t.data_type in TensorProto.DataType.values() else None
    if name is None or name in ("UNDEFINED", "STRING"):
        return None
    if name in _SUBBYTE_BITS:
        return (numel * _SUBBYTE_BITS[name] + 7) // 8
    try:
        return numel * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None


def inline_external_data(model, path: str | None, budget: int = ONNX_MAX_BYTES) -> None:
    """Replace every external-data reference of ``model`` by the bytes it names.

    A location is resolved against the directory of the model file ``path`` and must
    stay inside it: no absolute path, no ``..``, no symbolic link leading out of it,
    and a regular file; ``offset`` and ``length`` must lie within the file, and
    ``length`` must be the tensor's size.  At most ``budget`` bytes in all.  A model
    with no file (``path`` None, an in-memory ``ModelProto``) has no directory: an
    external reference is refused.  Each refusal is a :class:`ModelLoadError` naming
    the tensor and the location."""
    from onnx import TensorProto

    label = path or "<ModelProto>"
    base = os.path.realpath(os.path.dirname(os.path.abspath(path))) if path else None
    total = 0
    for what, t in _all_tensors(model):
        if not (t.HasField("data_location") and t.data_location == TensorProto.EXTERNAL):
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")

        def bad(msg, loc=loc, what=what):
            return ModelLoadError(f"{what}: external data location {loc[:200]!r} {msg}", where=label)

        if base is None:
            raise bad("cannot be resolved: an in-memory ModelProto has no directory; load the "
                      "model from its file")
        parts = re.split(r"[/\\]", loc)
        if not loc or "\0" in loc or os.path.isabs(loc) or loc.startswith(("/", "\\")) \
                or re.match(r"^[A-Za-z]:", loc):
            raise bad("is not a relative file name")
        if ".." in parts:
            raise bad("leads out of the model's directory ('..')")
        target = os.path.realpath(os.path.join(base, *[p for p in parts if p not in ("", ".")]))
        if os.path.commonpath([base, target]) != base:
            raise bad("leads out of the model's directory (through a symbolic link)")
        try:
            st = os.stat(target)
        except OSError:
            raise bad(f"names no file in the model's directory {base}") from None
        if not stat.S_ISREG(st.st_mode):
            raise bad("is not a regular file")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise bad(f"has a non-integer offset or length ({info.get('offset')!r}, "
                      f"{info.get('length')!r})") from None
        need = _tensor_nbytes(t)
        if need is None:
            raise bad(f"holds a tensor of type {t.data_type} and dims {list(t.dims)}, whose size "
                      "is not known")
        if length is None:
            length = need
        if offset < 0 or length < 0 or offset + length > st.st_size:
            raise bad(f"asks for {length} bytes at offset {offset}, beyond the file's {st.st_size} bytes")
        if length != need:
            raise bad(f"holds {length} bytes, the tensor (dims {list(t.dims)}) needs {need}")
        total += length
        if total > budget:
            raise bad(f"brings the external data past dlac's limit of {budget} bytes")
        with open(target, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise bad("could not be read in full")
        t.raw_data = data
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT
