"""PyTorch frontends: a live ``nn.Module`` (through ``torch.export``) or a saved
``torch.export`` program (``.pt2``).

A ``.pt2`` file is data, and dlac loads it without running any code from it.
``torch.export.load`` does not give that guarantee (torch 2.13): it unpickles
weights and constants with ``weights_only=False``, unpickles opaque constants with
``pickle.loads``, falls back to ``weights_only=False`` when the example inputs fail a
``weights_only=True`` load (and for the legacy archive formats), loads AOTInductor
shared libraries found in the archive, and evaluates strings from ``models/*.json``:
symbolic shape expressions (``sympy.sympify``, which is ``eval``), value names pasted
into the Python source of the FX graph module, guard code compiled into a function,
and pytree contexts whose ``__enum__`` entries import any module.  :func:`load_pt2`
reads the archive itself instead (see its docstring) and refuses, naming the file and
the archive member, whatever it cannot load as plain data.
"""

from __future__ import annotations

import ast
import builtins
import functools
import io
import json
import keyword
import os
import pickletools
import re
import sys
import warnings
import zipfile

from .errors import ExportError, ModelLoadError, UnsupportedOpError
from .frontend_common import ImportedModel, finalize, weights_hash


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _convert(ep, input_shapes, source: str, label: str) -> ImportedModel:
    from tvm.relax.frontend.torch import from_exported_program

    sig = ep.graph_signature
    display = dict(sig.inputs_to_parameters)
    display.update(sig.inputs_to_buffers)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = from_exported_program(ep, keep_params_as_input=True)
    except Exception as e:  # TVM's importer reports unsupported aten ops this way
        msg = str(e)
        if "Unsupported function type" in msg:
            ops = msg.split("[", 1)[-1].split("]", 1)[0]
            raise UnsupportedOpError(ops.strip("'\" "), label, "TVM's torch importer has no converter") from None
        raise ModelLoadError(f"TVM could not import the exported program: {_first_line(e)}",
                             where=label) from None
    state = ep.state_dict
    h = weights_hash(state[k].detach().cpu().numpy() for k in sorted(state))
    return finalize(mod, display, input_shapes or {}, source, h)


def from_torch(module, example_inputs, input_shapes: dict | None = None) -> ImportedModel:
    """Import ``module`` traced with ``example_inputs`` (a tensor or a tuple of them)."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    label = type(module).__name__
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.export(module.eval(), tuple(example_inputs))
    except Exception as e:
        raise ExportError(f"torch.export failed: {_first_line(e)}", where=f"module {label}") from None
    return _convert(ep, input_shapes, "torch", f"module {label}")


def from_pt2(path: str | os.PathLike, input_shapes: dict | None = None) -> ImportedModel:
    """Import a program saved with ``torch.export.save``, without running code from it
    (:func:`load_pt2`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelLoadError("no such file", where=path)
    ep = load_pt2(path)
    return _convert(ep, input_shapes, "pt2", path)


# ------------------------------------------------------------------ safe .pt2 loading

#: Bounds on a ``.pt2`` archive.  ``torch.export.save`` stores members uncompressed, so
#: the bytes once unpacked may exceed the file size only by the ratio below (a zip
#: bomb does not).
PT2_MAX_FILE_BYTES = 4 << 30
PT2_MAX_MEMBERS = 10_000
PT2_MAX_UNPACKED_BYTES = 4 << 30
PT2_MAX_UNPACK_RATIO = 8          # unpacked bytes per file byte, beyond PT2_UNPACK_SLACK
PT2_UNPACK_SLACK = 64 << 20
PT2_MAX_JSON_BYTES = 256 << 20    # models/model.json and the payload configs
PT2_MAX_DEPTH = 200               # JSON / treespec nesting
PT2_MAX_EXPR_CHARS = 4000         # one symbolic shape expression

_NOT_PT2 = "not a torch.export program (.pt2)"
_MODEL = "model"


def _refuse(path: str, member: str | None, msg: str) -> ModelLoadError:
    return ModelLoadError(f"{msg} (archive member '{member}')" if member else msg, where=path)


def load_pt2(path: str):
    """Load the ``torch.export`` program in the ``.pt2`` archive ``path`` without running
    code from it; a :class:`ModelLoadError` names the file and the archive member
    otherwise.

    Before torch sees anything, dlac reads the zip itself: at most
    :data:`PT2_MAX_MEMBERS` members, plain names under one root folder, stored or
    deflated, unpacking to at most :data:`PT2_MAX_UNPACKED_BYTES` (and at most
    :data:`PT2_MAX_UNPACK_RATIO` times the file).  It accepts only the members of one
    program named ``model``: ``models/model.json``, the weight and constant configs
    and the tensors they list, the example inputs, ``extra/*`` (never read) and the
    archive markers; it refuses AOTInductor libraries, other programs and legacy
    pickled weights.  Tensors are built from their raw bytes (``as_strided`` checks
    that every view fits its storage); a pickled tensor, and the example inputs, must
    pass a scan of their pickle's globals (tensor rebuilding only) and then
    ``torch.load(weights_only=True)``; custom (TorchScript) and opaque (pickled Python)
    constants are refused.  ``models/model.json`` is checked before it is deserialized:
    every value name is an identifier, every qualified name a dotted identifier, every
    node target names a torch op or an ``operator`` / ``math`` builtin, every symbolic
    expression parses to arithmetic over symbols and known sympy functions, and every
    pytree spec uses plain containers; its guard code (run only when the program is
    called) is dropped.  Then torch's own deserializer builds the program from these
    already-loaded tensors, so no ``torch.load`` runs inside it, and dlac checks the
    graph's call targets once more.
    """
    import torch
    from torch._export.serde import schema
    from torch._export.serde.serialize import (
        ExportedProgramDeserializer,
        _dict_to_dataclass,
    )
    from torch.export.pt2_archive import constants as C

    size = os.path.getsize(path)
    if size == 0:
        raise ModelLoadError(f"{_NOT_PT2}: the file is empty", where=path)
    if size > PT2_MAX_FILE_BYTES:
        raise ModelLoadError(f"{_NOT_PT2}: {size} bytes, more than dlac's limit of "
                             f"{PT2_MAX_FILE_BYTES}", where=path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise ModelLoadError(f"{_NOT_PT2}: not a zip archive ({_first_line(e)})", where=path) from None
    with zf:
        limit = min(PT2_MAX_UNPACKED_BYTES, PT2_MAX_UNPACK_RATIO * size + PT2_UNPACK_SLACK)
        infos = _check_zip(zf, path, None, limit)
        rel = _archive_members(infos, path)
        root = next(iter(infos)).split("/", 1)[0] + "/"

        def member(name):
            return root + name

        def read(name, limit=None):
            return _read_member(zf, rel[name], path, limit)

        fmt = rel.get(C.ARCHIVE_FORMAT_PATH)
        if fmt is None or read(C.ARCHIVE_FORMAT_PATH, 64) != C.ARCHIVE_FORMAT_VALUE.encode():
            hint = (" (a torch.save file? dlac needs torch.export.save)"
                    if any(n.endswith("data.pkl") for n in rel) else "")
            raise ModelLoadError(f"{_NOT_PT2}: no '{C.ARCHIVE_FORMAT_PATH}' member saying "
                                 f"'{C.ARCHIVE_FORMAT_VALUE}'{hint}", where=path)
        version = read(C.ARCHIVE_VERSION_PATH, 64) if C.ARCHIVE_VERSION_PATH in rel else None
        if version != C.ARCHIVE_VERSION_VALUE.encode():
            raise _refuse(path, member(C.ARCHIVE_VERSION_PATH),
                          f"archive version {version!r}, dlac reads version "
                          f"{C.ARCHIVE_VERSION_VALUE!r} (torch {torch.__version__.split('+')[0]})")
        if "byteorder" in rel and read("byteorder", 64).strip() != sys.byteorder.encode():
            raise _refuse(path, member("byteorder"), f"tensors are not stored {sys.byteorder}-endian")

        model_json = C.MODELS_FILENAME_FORMAT.format(_MODEL)
        wcfg = C.WEIGHTS_CONFIG_FILENAME_FORMAT.format(_MODEL)
        ccfg = C.CONSTANTS_CONFIG_FILENAME_FORMAT.format(_MODEL)
        sample = C.SAMPLE_INPUTS_FILENAME_FORMAT.format(_MODEL)
        for need in (model_json, wcfg, ccfg):
            if need not in rel:
                raise ModelLoadError(f"{_NOT_PT2}: no member '{member(need)}'", where=path)

        configs = {}
        for cfg_name, folder in ((wcfg, C.WEIGHTS_DIR), (ccfg, C.CONSTANTS_DIR)):
            d = _json_member(read(cfg_name, PT2_MAX_JSON_BYTES), path, member(cfg_name))
            try:
                cfg = _dict_to_dataclass(schema.PayloadConfig, d)
                if not (isinstance(cfg.config, dict) and all(
                        isinstance(m, schema.PayloadMeta) for m in cfg.config.values())):
                    raise ValueError("config is not a map of payload entries")
            except Exception as e:
                raise _refuse(path, member(cfg_name), f"malformed payload config: {_first_line(e)}") from None
            configs[folder] = (cfg_name, cfg)

        # every member must be one dlac knows how to read as data
        payload = {}
        for folder, (cfg_name, cfg) in configs.items():
            for fqn, meta in cfg.config.items():
                pname = meta.path_name
                if not _fqn_ok(fqn, allow_empty=False):
                    raise _refuse(path, member(cfg_name), f"{fqn!r} is not a qualified attribute name")
                if not isinstance(pname, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", pname):
                    raise _refuse(path, member(cfg_name), f"bad payload file name {pname!r}")
                name = folder + pname
                if folder == C.CONSTANTS_DIR and pname.startswith(C.CUSTOM_OBJ_FILENAME_PREFIX):
                    raise _refuse(path, member(name), f"constant {fqn!r} is a TorchScript custom "
                                  "object, which torch would unpickle; dlac loads tensors only")
                if folder == C.CONSTANTS_DIR and pname.startswith(C.OPAQUE_OBJ_FILENAME_PREFIX):
                    raise _refuse(path, member(name), f"constant {fqn!r} is an opaque Python object, "
                                  "which torch would unpickle with pickle.loads (arbitrary code); "
                                  "dlac loads tensors only")
                if folder == C.CONSTANTS_DIR and not pname.startswith(C.TENSOR_CONSTANT_FILENAME_PREFIX):
                    raise _refuse(path, member(name), f"constant {fqn!r} is of an unknown kind")
                if name not in rel:
                    raise _refuse(path, member(cfg_name), f"{fqn!r} is stored in '{member(name)}', "
                                  "which the archive does not have")
                payload[name] = folder
        known = {C.ARCHIVE_FORMAT_PATH, C.ARCHIVE_VERSION_PATH, "byteorder", ".format_version",
                 ".storage_alignment", model_json, wcfg, ccfg, sample}
        for name in rel:                 # extra/* and .data/* are never read
            if name in known or name in payload or name.startswith((C.EXTRA_DIR, ".data/")):
                continue
            raise _refuse(path, member(name), _unknown_member_reason(name, C))

        # tensors, from raw bytes or from tensor-only pickles
        tensors = {}
        for folder, (cfg_name, cfg) in configs.items():
            flat_cache = {}
            for fqn, meta in cfg.config.items():
                name = folder + meta.path_name
                try:
                    if meta.use_pickle is True:
                        t = _load_torch_pickle(read(name), path, member(name))
                        if type(t) not in (torch.Tensor, torch.nn.Parameter):
                            raise _refuse(path, member(name), f"{fqn!r} unpickles to a "
                                          f"{type(t).__name__}, not a plain tensor")
                    else:
                        t = _raw_tensor(lambda n=name: read(n), flat_cache, name, meta, path, member(name))
                    if meta.is_param is True and not isinstance(t, torch.nn.Parameter):
                        grad = meta.tensor_meta is not None and meta.tensor_meta.requires_grad is True
                        t = torch.nn.Parameter(t, requires_grad=grad and (t.is_floating_point()
                                                                          or t.is_complex()))
                except ModelLoadError:
                    raise
                except (TypeError, AttributeError, ValueError, KeyError, RuntimeError) as e:
                    raise _refuse(path, member(cfg_name), f"malformed entry for {fqn!r}: "
                                  f"{_first_line(e)}") from None
                tensors.setdefault(folder, {})[fqn] = t
        state_dict = tensors.get(C.WEIGHTS_DIR, {})
        constants = tensors.get(C.CONSTANTS_DIR, {})

        example_inputs = None
        if sample in rel:
            example_inputs = _load_torch_pickle(read(sample), path, member(sample))
            if not (isinstance(example_inputs, tuple) and len(example_inputs) == 2
                    and isinstance(example_inputs[0], tuple) and isinstance(example_inputs[1], dict)):
                raise _refuse(path, member(sample), "example inputs are not an (args, kwargs) pair")

        d = _json_member(read(model_json, PT2_MAX_JSON_BYTES), path, member(model_json))
        _check_program(d, path, member(model_json))
        d["guards_code"] = []          # compiled into a function by ExportedProgram.module()
        try:
            program = _dict_to_dataclass(schema.ExportedProgram, d)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ep = ExportedProgramDeserializer().deserialize(program, state_dict, constants,
                                                               example_inputs)
        except Exception as e:
            raise _refuse(path, member(model_json), f"{_NOT_PT2}: deserializing it failed: "
                          f"{_first_line(e)}") from None
    _check_targets(ep, path, member(model_json))
    return ep


def _check_zip(zf: zipfile.ZipFile, path: str, outer: str | None, limit: int) -> dict:
    """Member name -> ZipInfo, after the bounds and name checks of :func:`load_pt2`."""
    where = (lambda n: f"{outer}:{n}") if outer else (lambda n: n)
    infos = zf.infolist()
    if len(infos) > PT2_MAX_MEMBERS:
        raise _refuse(path, outer, f"{len(infos)} archive members, more than dlac's limit of "
                      f"{PT2_MAX_MEMBERS}")
    out, total = {}, 0
    for info in infos:
        n = info.filename
        if n.endswith("/") and info.file_size == 0 and n.count("/") <= 64:
            continue                     # a directory entry (zip -r writes them)
        parts = n.split("/")
        if (not n or len(n) > 1024 or n.startswith("/") or "\\" in n or "\0" in n
                or any(p in ("", ".", "..") for p in parts)):
            raise _refuse(path, where(n), "not a plain relative member name")
        if n in out:
            raise _refuse(path, where(n), "the archive holds this member twice")
        if info.flag_bits & 0x1:
            raise _refuse(path, where(n), "encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _refuse(path, where(n), f"compression method {info.compress_type} (dlac reads "
                          "stored or deflated members)")
        total += info.file_size
        if total > limit:
            raise _refuse(path, where(n), f"the archive unpacks to more than {limit} bytes "
                          "(dlac's limit for this file size; a zip bomb?)")
        out[n] = info
    if not out:
        raise _refuse(path, outer, f"{_NOT_PT2}: an empty zip archive" if outer is None
                      else "an empty zip archive")
    return out


def _archive_members(infos: dict, path: str) -> dict:
    """Member names without the archive's root folder (one for every member)."""
    roots = {n.split("/", 1)[0] for n in infos}
    if len(roots) != 1 or any("/" not in n for n in infos):
        old = "serialized_exported_program.json" in infos
        raise ModelLoadError(
            f"{_NOT_PT2}: " + ("the pre-2.7 torch.export format, whose weights torch unpickles "
                               "with weights_only=False; re-save it with torch.export.save"
                               if old else "the members are not under one root folder"), where=path)
    return {n.split("/", 1)[1]: info for n, info in infos.items()}


def _unknown_member_reason(name: str, C) -> str:
    if name.startswith(C.AOTINDUCTOR_DIR):
        return "AOTInductor compiled code (a shared library torch would load and run); dlac " \
               "loads the exported program only"
    if name in (f"{C.WEIGHTS_DIR}{_MODEL}.pt", f"{C.CONSTANTS_DIR}{_MODEL}.pt"):
        return "legacy pickled weights or constants, which torch unpickles with weights_only=False"
    if name.startswith(C.MODELS_DIR):
        return f"a second exported program; dlac loads the one named '{_MODEL}'"
    if name.startswith((C.EXECUTORCH_DIR, C.MTIA_DIR, C.XL_MODEL_WEIGHTS_DIR)):
        return "a payload dlac does not read"
    return "not a member of a torch.export program"


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, limit: int | None = None,
                 label: str | None = None) -> bytes:
    label = label or info.filename
    if limit is not None and info.file_size > limit:
        raise _refuse(path, label, f"{info.file_size} bytes, more than dlac's limit of {limit}")
    try:
        with zf.open(info) as f:
            data = f.read(info.file_size + 1)
    except Exception as e:  # noqa: BLE001 - BadZipFile (CRC), zlib.error, EOFError, OSError
        raise _refuse(path, label, f"cannot be read: {_first_line(e)}") from None
    if len(data) != info.file_size:
        raise _refuse(path, label, "its size differs from the one the archive declares")
    return data


def _json_member(data: bytes, path: str, member: str):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _refuse(path, member, f"not valid JSON: {_first_line(e)}") from None


def _raw_tensor(read, flat_cache: dict, name: str, meta, path: str, member: str):
    """A tensor from a raw-bytes payload member, as a view of its (shared) storage."""
    import torch
    from torch._export.serde.serialize import (
        _SERIALIZE_TO_TORCH_DTYPE,
        _SERIALIZE_TO_TORCH_LAYOUT,
    )

    tm = meta.tensor_meta
    if tm is None:
        raise _refuse(path, member, "a raw tensor without its metadata")
    dtype = _SERIALIZE_TO_TORCH_DTYPE.get(tm.dtype) if isinstance(tm.dtype, int) else None
    if dtype is None:
        raise _refuse(path, member, f"unknown dtype code {tm.dtype!r}")
    if not isinstance(tm.layout, int) or _SERIALIZE_TO_TORCH_LAYOUT.get(tm.layout) is not torch.strided:
        raise _refuse(path, member, "not a dense (strided) tensor")
    try:
        sizes = [_as_int(s) for s in tm.sizes]
        strides = [_as_int(s) for s in tm.strides]
        offset = _as_int(tm.storage_offset)
    except ValueError as e:
        raise _refuse(path, member, str(e)) from None
    if len(sizes) != len(strides) or len(sizes) > 16:
        raise _refuse(path, member, f"sizes {sizes} and strides {strides} do not match")
    numel = 1
    for s in sizes:
        numel *= s
    if name not in flat_cache:
        data = read()
        es = torch.empty((), dtype=dtype).element_size()
        if len(data) % es:
            raise _refuse(path, member, f"{len(data)} bytes, not a whole number of {dtype} elements")
        flat_cache[name] = (torch.frombuffer(bytearray(data), dtype=dtype) if data
                            else torch.empty(0, dtype=dtype))
    flat = flat_cache[name]
    if numel == 0:
        return torch.empty(sizes, dtype=dtype)
    try:
        return torch.as_strided(flat, sizes, strides, offset)
    except RuntimeError as e:
        raise _refuse(path, member, f"sizes {sizes}, strides {strides} and offset {offset} do not "
                      f"fit its {flat.numel()} elements ({_first_line(e)})") from None


def _as_int(s) -> int:
    v = getattr(s, "as_int", None) if getattr(s, "type", None) == "as_int" else None
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 62:
        raise ValueError(f"tensor geometry {s!r} is not a non-negative integer")
    return v


# --- pickles: tensor rebuilding only

@functools.lru_cache(maxsize=1)
def _pickle_globals() -> frozenset:
    import torch

    allowed = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
               ("collections", "OrderedDict"), ("torch", "Size")}
    for n in dir(torch):
        if n.endswith("Storage") or isinstance(getattr(torch, n, None), torch.dtype):
            allowed.add(("torch", n))
    return frozenset(allowed)


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
               "BINSTRING", "STRING"}
_MEMO_PUT = {"BINPUT", "LONG_BINPUT", "PUT"}
_MEMO_GET = {"BINGET", "LONG_BINGET", "GET"}


def _scan_pickle(data: bytes, path: str, member: str) -> None:
    """Refuse a pickle that names any global but the tensor-rebuilding ones (a second
    line of defence behind ``torch.load(weights_only=True)``)."""
    allowed = _pickle_globals()
    pushed: list = []        # what each stack-pushing op put there (a str or None)
    memo: dict = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in ("GLOBAL", "INST"):
                mod, _, attr = str(arg).partition(" ")
                if (mod, attr) not in allowed:
                    raise _refuse(path, member, f"the pickle refers to {mod}.{attr}, which is not "
                                  "tensor data; dlac does not unpickle it")
                pushed.append(None)
            elif name == "STACK_GLOBAL":
                mod, attr = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
                if not (isinstance(mod, str) and isinstance(attr, str)) or (mod, attr) not in allowed:
                    raise _refuse(path, member, f"the pickle refers to {mod}.{attr}, which is not "
                                  "tensor data; dlac does not unpickle it")
                pushed.append(None)
            elif name.startswith("EXT"):
                raise _refuse(path, member, "the pickle uses the copyreg extension registry")
            elif name in _STRING_OPS:
                pushed.append(arg if isinstance(arg, str) else None)
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in _MEMO_PUT:
                memo[arg] = pushed[-1] if pushed else None
            elif name in _MEMO_GET:
                pushed.append(memo.get(arg))
            elif name == "STOP":
                break
            else:
                pushed.append(None)
    except ModelLoadError:
        raise
    except Exception as e:
        raise _refuse(path, member, f"not a valid pickle: {_first_line(e)}") from None


def _load_torch_pickle(data: bytes, path: str, member: str):
    """A ``torch.save`` zip holding tensors only: bounds and a globals scan, then
    ``torch.load(weights_only=True)``."""
    import torch

    try:
        inner = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError):
        raise _refuse(path, member, "not a torch.save zip archive (a raw pickle?); dlac does "
                      "not unpickle it") from None
    with inner:
        infos = _check_zip(inner, path, member, min(PT2_MAX_UNPACKED_BYTES,
                                                    PT2_MAX_UNPACK_RATIO * len(data) + (1 << 20)))
        pkls = [n for n in infos if n.split("/")[-1] == "data.pkl"]
        if len(pkls) != 1:
            raise _refuse(path, member, "not a torch.save archive (no single data.pkl)")
        pkl = _read_member(inner, infos[pkls[0]], path, label=f"{member}:{pkls[0]}")
        _scan_pickle(pkl, path, f"{member}:{pkls[0]}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:
        raise _refuse(path, member, f"not loadable as tensors only (torch.load weights_only=True: "
                      f"{_first_line(e)})") from None


# --- models/model.json: strings that torch turns into code

#: dicts of models/model.json keyed by a graph value's name
_VALUE_MAPS = {"tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values",
               "custom_obj_values"}
#: dicts keyed by data that torch does not evaluate
_DATA_MAPS = {"range_constraints", "opset_version", "treespec_namedtuple_fields", "metadata",
              "as_string_to_argument"}
_NAME_FIELDS = {"name", "as_name", "user_input_name"}
_FQN_FIELDS = {"parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn"}
_IDENT = r"(?!__)[A-Za-z_][A-Za-z0-9_]*"
#: node targets: ops of torch's own namespaces, and the builtins of symbolic shape code
_TARGET = re.compile(rf"torch\.ops\.(aten|prims|higher_order|quantized_decomposed|quantized)"
                     rf"(\.{_IDENT}){{1,2}}|_operator\.{_IDENT}|math\.{_IDENT}|torch\._?sym_{_IDENT}")
_TREESPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict",
                   "torch.fx.immutable_collections.immutable_list",
                   "torch.fx.immutable_collections.immutable_dict"}


def _ident_ok(s) -> bool:
    return isinstance(s, str) and len(s) <= 1024 and s.isidentifier()


def _fqn_ok(s, allow_empty: bool = True) -> bool:
    if not isinstance(s, str) or len(s) > 4096:
        return False
    if s == "":
        return allow_empty
    return all(p.isidentifier() or p.isdigit() for p in s.split("."))


def _check_program(d, path: str, member: str) -> None:
    """Refuse the strings of ``models/model.json`` that torch would turn into code."""

    def bad(msg):
        raise _refuse(path, member, msg)

    def walk(o, key, depth):
        if depth > PT2_MAX_DEPTH:
            bad("nested too deeply")
        if isinstance(o, dict):
            if key in _VALUE_MAPS:
                for k, v in o.items():
                    if not _ident_ok(k):
                        bad(f"value name {k[:80]!r} in {key} is not an identifier")
                    walk(v, None, depth + 1)
            elif key in _DATA_MAPS:
                for v in o.values():
                    walk(v, None, depth + 1)
            else:
                for k, v in o.items():
                    walk(v, k, depth + 1)
        elif isinstance(o, list):
            for v in o:
                walk(v, key, depth + 1)
        elif isinstance(o, str):
            if key in _NAME_FIELDS and o and not _ident_ok(o):
                bad(f"{key} {o[:80]!r} is not an identifier (torch pastes names into Python source)")
            elif key == "forward_arg_names" and not _ident_ok(o):
                bad(f"argument name {o[:80]!r} is not an identifier")
            elif key in _FQN_FIELDS and not _fqn_ok(o):
                bad(f"{key} {o[:80]!r} is not a qualified attribute name")
            elif key in ("target", "as_operator") and not _TARGET.fullmatch(o):
                bad(f"node target {o[:80]!r} is not an op of torch's own namespaces or an "
                    "operator/math builtin")
            elif key == "expr_str":
                _check_sym_expr(o, bad)
            elif key in ("in_spec", "out_spec"):
                _check_treespec(o, bad)
            elif key == "class_fqn" and not _fqn_ok(o, allow_empty=False):
                bad(f"class name {o[:80]!r} is not a qualified name")

    if not isinstance(d, dict):
        bad("not an exported program (a JSON object was expected)")
    walk(d, None, 0)


def _check_treespec(s: str, bad) -> None:
    """A pytree spec of plain containers whose contexts hold no JSON objects (torch's
    ``enum_object_hook`` imports the module an ``__enum__`` object names)."""
    try:
        protocol, spec = json.loads(s)
    except (ValueError, TypeError, RecursionError):
        bad(f"pytree spec {s[:80]!r} is not a [protocol, spec] JSON pair")
    if protocol != 1:
        bad(f"pytree spec protocol {protocol!r} (dlac reads protocol 1)")

    def plain(v, depth):
        if depth > PT2_MAX_DEPTH or isinstance(v, dict):
            return False
        return all(plain(x, depth + 1) for x in v) if isinstance(v, list) else True

    def walk(node, depth):
        if depth > PT2_MAX_DEPTH or not isinstance(node, dict):
            bad("malformed pytree spec")
        if node.get("type") not in _TREESPEC_TYPES:
            bad(f"pytree spec of type {str(node.get('type'))[:80]!r}; dlac takes tuples, lists "
                "and dicts of tensors")
        ctx = node.get("context")
        if ctx is not None:
            try:
                ok = isinstance(ctx, str) and plain(json.loads(ctx), 0)
            except (ValueError, RecursionError):
                ok = False
            if not ok:
                bad(f"pytree context {str(ctx)[:80]!r} is not a plain JSON list")
        children = node.get("children_spec") or []
        if not isinstance(children, list):
            bad("malformed pytree spec")
        for c in children:
            walk(c, depth + 1)

    walk(spec, 0)


#: functions a symbolic expression may call: torch's sympy functions (the deserializer's
#: ``sympy_functions``), the constructors ``sympy.srepr`` writes (torch serializes
#: expressions that way: ``Mul(Integer(8), Symbol('s39', positive=True, integer=True))``)
#: and plain sympy arithmetic, logic and relations
_SYM_CALLS = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
    "Symbol", "Dummy", "Integer", "Float", "Rational", "Add", "Mul", "Pow",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "Min", "Max", "Abs", "floor",
    "ceiling", "Piecewise", "ITE", "sqrt",
}
_SYM_NAMES = {"oo", "zoo", "nan", "pi", "E", "true", "false", "int_oo"}
_SYM_ASSUMPTIONS = {"integer", "positive", "negative", "nonnegative", "nonpositive", "real",
                    "finite", "infinite", "zero", "nonzero", "even", "odd", "rational",
                    "commutative", "extended_real", "evaluate"}
_POW_LIKE = {"Pow", "PowByNatural", "FloatPow", "LShift", "RShift"}
_SYM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|[-+]?inf|nan")
_MAX_EXPONENTS = 4096    # product of the constant exponents in one expression


@functools.lru_cache(maxsize=1)
def _namespaces() -> tuple[frozenset, frozenset]:
    """Names sympy's parser resolves: sympy's own, and Python's builtins."""
    import sympy

    return frozenset(vars(sympy)), frozenset(dir(builtins))


def _check_sym_expr(s: str, bad) -> None:
    """``s`` goes to ``sympy.sympify``, i.e. ``eval``: it must parse to arithmetic,
    comparisons and logic over numbers, symbols and the functions of :data:`_SYM_CALLS`
    (no attribute, no name of a Python builtin or of another sympy object, no string
    but a symbol's name or a float's digits), with exponents small enough to evaluate."""
    if len(s) > PT2_MAX_EXPR_CHARS:
        bad(f"symbolic expression of {len(s)} characters")
    try:
        tree = ast.parse(s, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        bad(f"symbolic expression {s[:80]!r} does not parse")
    sympy_ns, builtin_ns = _namespaces()
    budget = [_MAX_EXPONENTS]

    def number(n) -> int | float | None:
        """The value of a numeric literal (``3``, ``-3``, ``Integer(3)``), else None."""
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            v = number(n.operand)
            return None if v is None else -v
        if isinstance(n, ast.Constant) and type(n.value) in (int, float):
            return n.value
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "Integer"
                and len(n.args) == 1 and not n.keywords):
            return number(n.args[0])
        return None

    def exponent_ok(e) -> bool:
        v = number(e)
        if v is None:       # symbolic: fine unless it is itself a power of numbers
            return not (isinstance(e, ast.BinOp) and isinstance(e.op, ast.Pow)) and not (
                isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id in _POW_LIKE)
        if abs(v) > 64:
            return False
        budget[0] //= max(1, int(abs(v)))
        return budget[0] > 0

    def ok(n) -> bool:
        if isinstance(n, ast.Expression):
            return ok(n.body)
        if isinstance(n, ast.Constant):
            v = n.value
            return type(v) is bool or (type(v) is int and abs(v) < 1 << 64) or type(v) is float
        if isinstance(n, ast.Name):
            name = n.id
            if name in _SYM_CALLS or name in _SYM_NAMES:
                return True
            return (_SYM_NAME.fullmatch(name) is not None and not keyword.iskeyword(name)
                    and name not in builtin_ns and name not in sympy_ns)
        if isinstance(n, ast.BinOp):
            if isinstance(n.op, ast.Pow):
                if not exponent_ok(n.right):
                    return False
            elif not isinstance(n.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod,
                                       ast.BitAnd, ast.BitOr)):
                return False
            return ok(n.left) and ok(n.right)
        if isinstance(n, ast.UnaryOp):
            return isinstance(n.op, (ast.USub, ast.UAdd, ast.Not, ast.Invert)) and ok(n.operand)
        if isinstance(n, ast.BoolOp):
            return all(ok(v) for v in n.values)
        if isinstance(n, ast.Compare):
            return (all(isinstance(o, (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE))
                        for o in n.ops) and ok(n.left) and all(ok(c) for c in n.comparators))
        if isinstance(n, ast.Tuple):
            return all(ok(e) for e in n.elts)
        if isinstance(n, ast.Call):
            if not isinstance(n.func, ast.Name) or n.func.id not in _SYM_CALLS:
                return False
            fname, args = n.func.id, list(n.args)
            if any(isinstance(a, ast.Starred) for a in args):
                return False
            if fname in ("Symbol", "Dummy", "Float"):
                first = args[0] if args else None
                if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                    if fname != "Float":
                        return False
                else:
                    pattern = _FLOAT_TEXT if fname == "Float" else _SYM_NAME
                    if len(first.value) > 64 or not pattern.fullmatch(first.value):
                        return False
                    args = args[1:]
            if fname in _POW_LIKE and (len(args) != 2 or not exponent_ok(args[1])):
                return False
            for k in n.keywords:
                v = k.value.value if isinstance(k.value, ast.Constant) else None
                if not ((k.arg in _SYM_ASSUMPTIONS and type(v) is bool)
                        or (k.arg == "precision" and type(v) is int and 0 < v <= 1000)):
                    return False
            return all(ok(a) for a in args)
        return False

    if not ok(tree):
        bad(f"symbolic expression {s[:80]!r} is not plain arithmetic over symbols (torch would "
            "eval it)")


def _check_targets(ep, path: str, member: str) -> None:
    """Every call in the deserialized graph (and its subgraphs) is a torch op, a
    higher-order op or an ``operator`` / ``math`` / ``torch.sym_*`` builtin."""
    import inspect

    import torch

    sym = {getattr(torch, n) for n in dir(torch) if re.fullmatch(r"_?sym_\w+", n)}
    for gm in ep.graph_module.modules():
        graph = getattr(gm, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op in ("call_module", "call_method"):
                raise _refuse(path, member, f"graph node {node.name} is a {node.op}")
            if node.op != "call_function":
                continue
            t = node.target
            if isinstance(t, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
                continue
            if any(t is f for f in sym):
                continue
            if inspect.isbuiltin(t) and getattr(t, "__module__", None) in ("_operator", "math"):
                continue
            raise _refuse(path, member, f"graph node {node.name} calls {t!r}, which is not a torch op")
