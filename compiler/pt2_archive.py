"""Reading a ``.pt2`` archive (``torch.export.save``) as data: :func:`load_pt2`.

Why not ``torch.export.load``: see :mod:`compiler.frontend_torch`.  The archive is read
with bounds (file size, member count, unpacked bytes and ratio, JSON size), only the
members of one program are accepted, weights and constants are built from their raw
bytes, pickles must pass a scan of their globals and then ``weights_only=True``, and the
program's JSON is checked (:mod:`compiler.pt2_program`) before torch's deserializer sees
it.  Every refusal names the file and the archive member.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickletools
import re
import sys
import warnings
import zipfile

from target_dlac.core.errors import ModelLoadError
from compiler.frontend_common import first_line
from compiler.pt2_program import check_program, check_targets, fqn_ok, refuse

#: Bounds on a ``.pt2`` archive.  ``torch.export.save`` stores members uncompressed, so
#: the bytes once unpacked may exceed the file size only by the ratio below (a zip
#: bomb does not).
PT2_MAX_FILE_BYTES = 4 << 30
PT2_MAX_MEMBERS = 10_000
PT2_MAX_UNPACKED_BYTES = 4 << 30
PT2_MAX_UNPACK_RATIO = 8          # unpacked bytes per file byte, beyond PT2_UNPACK_SLACK
PT2_UNPACK_SLACK = 64 << 20
PT2_MAX_JSON_BYTES = 256 << 20    # models/model.json and the payload configs

_NOT_PT2 = "not a torch.export program (.pt2)"
_MODEL = "model"




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
        raise ModelLoadError(f"{_NOT_PT2}: not a zip archive ({first_line(e)})", where=path) from None
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
            raise refuse(path, member(C.ARCHIVE_VERSION_PATH),
                          f"archive version {version!r}, dlac reads version "
                          f"{C.ARCHIVE_VERSION_VALUE!r} (torch {torch.__version__.split('+')[0]})")
        if "byteorder" in rel and read("byteorder", 64).strip() != sys.byteorder.encode():
            raise refuse(path, member("byteorder"), f"tensors are not stored {sys.byteorder}-endian")

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
                raise refuse(path, member(cfg_name), f"malformed payload config: {first_line(e)}") from None
            configs[folder] = (cfg_name, cfg)

        # every member must be one dlac knows how to read as data
        payload = {}
        for folder, (cfg_name, cfg) in configs.items():
            for fqn, meta in cfg.config.items():
                pname = meta.path_name
                if not fqn_ok(fqn, allow_empty=False):
                    raise refuse(path, member(cfg_name), f"{fqn!r} is not a qualified attribute name")
                if not isinstance(pname, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", pname):
                    raise refuse(path, member(cfg_name), f"bad payload file name {pname!r}")
                name = folder + pname
                if folder == C.CONSTANTS_DIR and pname.startswith(C.CUSTOM_OBJ_FILENAME_PREFIX):
                    raise refuse(path, member(name), f"constant {fqn!r} is a TorchScript custom "
                                  "object, which torch would unpickle; dlac loads tensors only")
                if folder == C.CONSTANTS_DIR and pname.startswith(C.OPAQUE_OBJ_FILENAME_PREFIX):
                    raise refuse(path, member(name), f"constant {fqn!r} is an opaque Python object, "
                                  "which torch would unpickle with pickle.loads (arbitrary code); "
                                  "dlac loads tensors only")
                if folder == C.CONSTANTS_DIR and not pname.startswith(C.TENSOR_CONSTANT_FILENAME_PREFIX):
                    raise refuse(path, member(name), f"constant {fqn!r} is of an unknown kind")
                if name not in rel:
                    raise refuse(path, member(cfg_name), f"{fqn!r} is stored in '{member(name)}', "
                                  "which the archive does not have")
                payload[name] = folder
        known = {C.ARCHIVE_FORMAT_PATH, C.ARCHIVE_VERSION_PATH, "byteorder", ".format_version",
                 ".storage_alignment", model_json, wcfg, ccfg, sample}
        for name in rel:                 # extra/* and .data/* are never read
            if name in known or name in payload or name.startswith((C.EXTRA_DIR, ".data/")):
                continue
            raise refuse(path, member(name), _unknown_member_reason(name, C))

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
                            raise refuse(path, member(name), f"{fqn!r} unpickles to a "
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
                    raise refuse(path, member(cfg_name), f"malformed entry for {fqn!r}: "
                                  f"{first_line(e)}") from None
                tensors.setdefault(folder, {})[fqn] = t
        state_dict = tensors.get(C.WEIGHTS_DIR, {})
        constants = tensors.get(C.CONSTANTS_DIR, {})

        example_inputs = None
        if sample in rel:
            example_inputs = _load_torch_pickle(read(sample), path, member(sample))
            if not (isinstance(example_inputs, tuple) and len(example_inputs) == 2
                    and isinstance(example_inputs[0], tuple) and isinstance(example_inputs[1], dict)):
                raise refuse(path, member(sample), "example inputs are not an (args, kwargs) pair")

        d = _json_member(read(model_json, PT2_MAX_JSON_BYTES), path, member(model_json))
        check_program(d, path, member(model_json))
        d["guards_code"] = []          # compiled into a function by ExportedProgram.module()
        try:
            program = _dict_to_dataclass(schema.ExportedProgram, d)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ep = ExportedProgramDeserializer().deserialize(program, state_dict, constants,
                                                               example_inputs)
        except Exception as e:
            raise refuse(path, member(model_json), f"{_NOT_PT2}: deserializing it failed: "
                          f"{first_line(e)}") from None
    check_targets(ep, path, member(model_json))
    return ep


def _check_zip(zf: zipfile.ZipFile, path: str, outer: str | None, limit: int) -> dict:
    """Member name -> ZipInfo, after the bounds and name checks of :func:`load_pt2`."""
    where = (lambda n: f"{outer}:{n}") if outer else (lambda n: n)
    infos = zf.infolist()
    if len(infos) > PT2_MAX_MEMBERS:
        raise refuse(path, outer, f"{len(infos)} archive members, more than dlac's limit of "
                      f"{PT2_MAX_MEMBERS}")
    out, total = {}, 0
    for info in infos:
        n = info.filename
        if n.endswith("/") and info.file_size == 0 and n.count("/") <= 64:
            continue                     # a directory entry (zip -r writes them)
        parts = n.split("/")
        if (not n or len(n) > 1024 or n.startswith("/") or "\\" in n or "\0" in n
                or any(p in ("", ".", "..") for p in parts)):
            raise refuse(path, where(n), "not a plain relative member name")
        if n in out:
            raise refuse(path, where(n), "the archive holds this member twice")
        if info.flag_bits & 0x1:
            raise refuse(path, where(n), "encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise refuse(path, where(n), f"compression method {info.compress_type} (dlac reads "
                          "stored or deflated members)")
        total += info.file_size
        if total > limit:
            raise refuse(path, where(n), f"the archive unpacks to more than {limit} bytes "
                          "(dlac's limit for this file size; a zip bomb?)")
        out[n] = info
    if not out:
        raise refuse(path, outer, f"{_NOT_PT2}: an empty zip archive" if outer is None
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
        raise refuse(path, label, f"{info.file_size} bytes, more than dlac's limit of {limit}")
    try:
        with zf.open(info) as f:
            data = f.read(info.file_size + 1)
    except Exception as e:  # noqa: BLE001 - BadZipFile (CRC), zlib.error, EOFError, OSError
        raise refuse(path, label, f"cannot be read: {first_line(e)}") from None
    if len(data) != info.file_size:
        raise refuse(path, label, "its size differs from the one the archive declares")
    return data


def _json_member(data: bytes, path: str, member: str):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise refuse(path, member, f"not valid JSON: {first_line(e)}") from None


def _raw_tensor(read, flat_cache: dict, name: str, meta, path: str, member: str):
    """A tensor from a raw-bytes payload member, as a view of its (shared) storage."""
    import torch
    from torch._export.serde.serialize import (
        _SERIALIZE_TO_TORCH_DTYPE,
        _SERIALIZE_TO_TORCH_LAYOUT,
    )

    tm = meta.tensor_meta
    if tm is None:
        raise refuse(path, member, "a raw tensor without its metadata")
    dtype = _SERIALIZE_TO_TORCH_DTYPE.get(tm.dtype) if isinstance(tm.dtype, int) else None
    if dtype is None:
        raise refuse(path, member, f"unknown dtype code {tm.dtype!r}")
    if not isinstance(tm.layout, int) or _SERIALIZE_TO_TORCH_LAYOUT.get(tm.layout) is not torch.strided:
        raise refuse(path, member, "not a dense (strided) tensor")
    try:
        sizes = [_as_int(s) for s in tm.sizes]
        strides = [_as_int(s) for s in tm.strides]
        offset = _as_int(tm.storage_offset)
    except ValueError as e:
        raise refuse(path, member, str(e)) from None
    if len(sizes) != len(strides) or len(sizes) > 16:
        raise refuse(path, member, f"sizes {sizes} and strides {strides} do not match")
    numel = 1
    for s in sizes:
        numel *= s
    if name not in flat_cache:
        data = read()
        es = torch.empty((), dtype=dtype).element_size()
        if len(data) % es:
            raise refuse(path, member, f"{len(data)} bytes, not a whole number of {dtype} elements")
        flat_cache[name] = (torch.frombuffer(bytearray(data), dtype=dtype) if data
                            else torch.empty(0, dtype=dtype))
    flat = flat_cache[name]
    if numel == 0:
        return torch.empty(sizes, dtype=dtype)
    try:
        return torch.as_strided(flat, sizes, strides, offset)
    except RuntimeError as e:
        raise refuse(path, member, f"sizes {sizes}, strides {strides} and offset {offset} do not "
                      f"fit its {flat.numel()} elements ({first_line(e)})") from None


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
                    raise refuse(path, member, f"the pickle refers to {mod}.{attr}, which is not "
                                  "tensor data; dlac does not unpickle it")
                pushed.append(None)
            elif name == "STACK_GLOBAL":
                mod, attr = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
                if not (isinstance(mod, str) and isinstance(attr, str)) or (mod, attr) not in allowed:
                    raise refuse(path, member, f"the pickle refers to {mod}.{attr}, which is not "
                                  "tensor data; dlac does not unpickle it")
                pushed.append(None)
            elif name.startswith("EXT"):
                raise refuse(path, member, "the pickle uses the copyreg extension registry")
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
        raise refuse(path, member, f"not a valid pickle: {first_line(e)}") from None


def _load_torch_pickle(data: bytes, path: str, member: str):
    """A ``torch.save`` zip holding tensors only: bounds and a globals scan, then
    ``torch.load(weights_only=True)``."""
    import torch

    try:
        inner = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError):
        raise refuse(path, member, "not a torch.save zip archive (a raw pickle?); dlac does "
                      "not unpickle it") from None
    with inner:
        infos = _check_zip(inner, path, member, min(PT2_MAX_UNPACKED_BYTES,
                                                    PT2_MAX_UNPACK_RATIO * len(data) + (1 << 20)))
        pkls = [n for n in infos if n.split("/")[-1] == "data.pkl"]
        if len(pkls) != 1:
            raise refuse(path, member, "not a torch.save archive (no single data.pkl)")
        pkl = _read_member(inner, infos[pkls[0]], path, label=f"{member}:{pkls[0]}")
        _scan_pickle(pkl, path, f"{member}:{pkls[0]}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:
        raise refuse(path, member, f"not loadable as tensors only (torch.load weights_only=True: "
                      f"{first_line(e)})") from None


# --- models/model.json: strings that torch turns into code
