"""Argument parsing and small helpers of the ``dlac`` command line (kept apart from the
click commands in :mod:`compiler.cli`; none of them imports TVM or torch)."""

from __future__ import annotations

import io
import json
import math
import os
import stat
import struct

from target_dlac.text import printable  # noqa: F401 - re-exported for the CLI

from .errors import ConfigError, DlacError


def parse_input_shapes(specs) -> dict:
    from .frontend_common import parse_shape

    shapes = {}
    for spec in specs:
        name, sep, shape = spec.partition("=")
        if not sep or not name:
            raise ConfigError(f"--input-shape {spec!r}: expected NAME=1x3x224x224")
        shapes[name] = parse_shape(shape)
    return shapes


def parse_precisions(specs, acts: dict | None = None) -> dict:
    """``PATTERN=PREC`` strings, or ``FILE.toml`` files holding ``"pattern" = "prec"`` pairs
    (top level or under ``[precision]``; activation types under ``[activations]``, put
    into ``acts``), in order; earlier entries are checked first."""
    out = {}
    for spec in specs:
        if spec.endswith(".toml"):
            weights, act = _precision_file(spec)
            out.update(weights)
            if acts is not None:
                acts.update(act)
            continue
        pattern, sep, prec = spec.rpartition("=")
        if not sep or not pattern:
            raise ConfigError(f"--precision {spec!r}: expected PATTERN=PRECISION (e.g. 'layer4.*=fp32')")
        out[pattern] = prec
    return out


def _precision_file(path: str) -> dict:
    from .config import read_toml

    data = read_toml(path, "precision file")
    acts = data.get("activations", {})
    table = data.get("precision", {k: v for k, v in data.items() if k != "activations"})
    for what, t in (("precision", table), ("activations", acts)):
        bad = [k for k, v in (t.items() if isinstance(t, dict) else [("", None)]) if not isinstance(v, str)]
        if bad:
            raise ConfigError(f"precision file {path!r}: [{what}] entry {bad[0]!r} must map a layer "
                              "pattern to a string (weights: fp32, ternary, int4, int8, swis; "
                              "activations: fp32, fp16)")
    return dict(table), dict(acts)


def _machine(path):
    from target_dlac.machine import Machine

    return Machine.from_toml(path) if path else Machine()


# ------------------------------------------------------------------ terminal-safe names

def printable_lines(text) -> str:
    """``text`` (a multi-line table) with every line made :func:`printable`."""
    return "\n".join(printable(line) for line in str(text).split("\n"))


# ------------------------------------------------------------------ strict JSON reports

def strict_json(obj, **kwargs) -> str:
    """``json.dumps(obj, allow_nan=False)`` after replacing every non-finite float by a
    string: NaN -> ``"nan"``, +Inf -> ``"inf"``, -Inf -> ``"-inf"``.  The result is strict
    JSON (RFC 8259: no ``NaN`` / ``Infinity`` tokens) that any parser reads; a consumer
    sees a string where a number could not be written.  Used for every report the CLI
    writes (``compile/run --report-json``, ``inspect --json``)."""
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def _finite(obj):
    if type(obj).__module__ == "numpy" and getattr(obj, "ndim", None) == 0:
        obj = obj.item()                # NumPy scalars: plain Python numbers
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "nan" if obj != obj else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# ------------------------------------------------------------------ output paths

def check_outputs(outputs, inputs) -> None:
    """Refuse, before any work, output paths the command must not write to.

    ``outputs`` / ``inputs``: ``(flag, path)`` pairs (``path`` None or "" = not given).
    An output is refused (:class:`ConfigError`, one line naming the flag and the path)
    when it is an existing directory, symbolic link or other non-regular file (FIFO,
    device, socket; checked with ``os.lstat``, so a symlink is never followed), when its
    directory does not exist or is not writable, when it is the same file as one of the
    (existing) inputs (``os.path.samefile``, which sees hard links and symlinks to it), or
    when two outputs are the same file (``samefile``, else equal ``realpath``).  Only the
    existence of the directory is checked, not that of the inputs (their readers do)."""
    outs = [(flag, os.fspath(p)) for flag, p in outputs if p is not None]
    ins = [(flag, os.fspath(p)) for flag, p in inputs if p and os.path.exists(p)]
    for i, (flag, path) in enumerate(outs):
        where = f"{flag} {path!r}"
        if not path:
            raise ConfigError(f"{flag}: empty output path")
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:            # a parent is not a directory, name too long, ...
            raise ConfigError(f"{where}: cannot write there ({e.strerror})") from None
        if st is not None:
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                raise ConfigError(f"{where} is a directory; give a file name")
            if stat.S_ISLNK(mode):
                raise ConfigError(f"{where} is a symbolic link; refusing to write through it "
                                  "(give the target path)")
            if not stat.S_ISREG(mode):
                kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
                        or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
                raise ConfigError(f"{where} is {kind}; outputs must be regular files")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ConfigError(f"{where}: directory {parent!r} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{where}: directory {parent!r} is not writable")
        for iflag, ipath in ins:
            if _same_file(path, ipath):
                raise ConfigError(f"{where} is the same file as {iflag} {ipath!r}; refusing to "
                                  "overwrite an input")
        for oflag, opath in outs[:i]:
            if _same_file(path, opath):
                raise ConfigError(f"{where} is the same file as {oflag} {opath!r}; give each "
                                  "output its own file")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        pass
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except (OSError, ValueError):
        return False


def model_path(spec: str) -> str:
    """The file of a MODEL argument (``FILE.onnx``, ``FILE.pt2`` or ``FILE.py:FACTORY``)."""
    if os.path.exists(spec) or ":" not in spec:
        return spec
    return spec.rpartition(":")[0]


# ------------------------------------------------------------------ names in an .npz

#: longest member name written (UTF-8 bytes; what most file systems allow for a file name)
MAX_MEMBER_NAME = 255


def npz_name_problem(name) -> str | None:
    r"""Why ``name`` (an output name from a binary's tensor table) cannot be an .npz member
    name, or None.  Refused: non-strings, the empty name, ``.`` and ``..``, names holding
    ``/`` or ``\`` (zip-slip on extraction), NUL or any other non-printable character
    (control characters, newlines, ESC, format characters), lone surrogates (not UTF-8),
    names longer than 255 UTF-8 bytes."""
    if not isinstance(name, str) or not name:
        return "it is empty" if name == "" else "it is not a string"
    if name in (".", ".."):
        return "it is a relative directory name"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid Unicode (a lone surrogate)"
    if not name.isprintable():
        return "it contains a control or other non-printable character"
    if size > MAX_MEMBER_NAME:
        return f"it is {size} bytes long (at most {MAX_MEMBER_NAME})"
    return None


def check_npz_names(names, flag: str = "--output") -> None:
    """Refuse (before the run) output names that :func:`npz_name_problem` rejects: dlac
    does not rename them, so a member of the .npz is always the tensor's name + ``.npy``."""
    for name in names:
        why = npz_name_problem(name)
        if why:
            raise ConfigError(f"{flag}: output tensor {printable(repr(name))[:200]} of the binary's tensor "
                              f"table cannot name an .npz member: {why}")


def npz_bytes(arrays: dict) -> bytes:
    """An .npz (uncompressed zip of ``NAME.npy`` members, as ``np.savez`` writes it) of
    ``arrays``, built with zipfile and ``np.lib.format.write_array`` so that no name is
    ever passed as a keyword argument.  Names must pass :func:`npz_name_problem`."""
    import io
    import zipfile

    import numpy as np

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            why = npz_name_problem(name)
            if why:
                raise ConfigError(f"output {printable(repr(name))[:200]} cannot name an .npz member: {why}")
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    return buf.getvalue()


# ------------------------------------------------------------------ reading .npy / .npz

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
#: largest .npy header read (NumPy's own default limit)
MAX_NPY_HEADER = 10000


def _load_npz(path: str, what: str) -> dict:
    """The arrays of the .npz ``path`` (``what``: the option, e.g. ``--calib``), name ->
    array.  Every failure is a :class:`ConfigError` naming the file (and the member)."""
    data = _read_arrays(path, what)
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {path!r}: expected a .npz keyed by input name, got a .npy")
    return data


def _load_inputs(path: str, prog) -> dict:
    """The inputs of ``prog`` from ``path``: a .npy (a program with one input) or a .npz
    keyed by input name.  Names, shapes and dtypes are checked against the program
    from the headers, before any array data is read."""
    expect = {t.name: tuple(t.shape) for t in prog.inputs}
    data = _read_arrays(path, "input", expect)
    if isinstance(data, dict):
        return data
    return {next(iter(expect)): data}


def _read_arrays(path: str, what: str, expect: dict | None = None):
    """A .npy (-> array) or .npz (-> dict) file, read without pickle and defensively:
    the type is told by the magic bytes; headers are bounded; only numeric arrays (bool,
    int, uint, float) are accepted (no object, string, structured or complex dtypes); a
    header that promises more data than the file holds is refused before allocating."""
    label = f"{what} file {path!r}"
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ConfigError(f"{label} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{label} is a directory, not a .npy/.npz array file") from None
    except OSError as e:
        raise ConfigError(f"{label} cannot be read: {e.strerror or e}") from None
    with f:
        try:
            st = os.fstat(f.fileno())
            size = st.st_size if stat.S_ISREG(st.st_mode) else None
            head = f.read(len(NPY_MAGIC))
            if not head:
                raise ConfigError(f"{label} is empty")
            if head == NPY_MAGIC:
                if expect is not None and len(expect) != 1:
                    raise ConfigError(f"{label}: a .npy holds one array; the program takes "
                                      f"{sorted(expect)} (use .npz)")
                name = next(iter(expect)) if expect else None
                return _read_npy(f, None if size is None else size - len(head), label,
                                 name, head, None if expect is None else expect[name])
            if head[:4] in ZIP_MAGICS:
                f.seek(0)
                return _read_npz(f, label, expect)
            hint = " (pickled data is refused)" if head[:1] == b"\x80" else ""
            raise ConfigError(f"{label} is not a .npy/.npz array file{hint}")
        except DlacError:
            raise
        except Exception as e:          # noqa: BLE001 - whatever a hostile file provokes
            raise ConfigError(f"{label} cannot be read: {type(e).__name__}: {str(e)[:200]}") from None


def _read_npz(f, label: str, expect: dict | None) -> dict:
    import zipfile

    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ConfigError(f"{label} is not a valid .npz (zip) file: {str(e)[:200]}") from None
    total = os.fstat(f.fileno()).st_size
    with zf:
        members = {}
        for info in zf.infolist():
            if info.is_dir() or not info.filename.endswith(".npy"):
                raise ConfigError(f"{label}: member {info.filename!r} is not a .npy array")
            key = info.filename[:-len(".npy")]
            if key in members:
                raise ConfigError(f"{label}: member {info.filename!r} appears twice")
            members[key] = info
        if expect is not None and set(members) != set(expect):
            missing = sorted(set(expect) - set(members))
            extra = sorted(set(members) - set(expect))
            raise ConfigError(f"{label}: inputs: missing {missing or 'none'}, unexpected {extra or 'none'}; "
                              f"the program takes {sorted(expect)}")
        out = {}
        for key, info in members.items():
            where = f"{label}, member {info.filename!r}"
            try:
                with zf.open(info) as m:
                    head = m.read(len(NPY_MAGIC))
                    if head != NPY_MAGIC:
                        raise ConfigError(f"{where} is not a .npy array"
                                          + (" (pickled data is refused)" if head[:1] == b"\x80" else ""))
                    out[key] = _read_npy(m, _member_size(info, total) - len(head), where, key, head,
                                         None if expect is None else expect[key])
            except DlacError:
                raise
            except Exception as e:      # noqa: BLE001 - bad CRC, encryption, compression, ...
                raise ConfigError(f"{where} cannot be read: {type(e).__name__}: {str(e)[:200]}") from None
        return out


def _member_size(info, total: int) -> int:
    """The bytes a zip member can really hold: its declared size, bounded by what its
    compressed size (itself bounded by the file) can expand to (stored: 1:1; deflate at
    most about 1032:1; others: assume 4096:1), so a lying header is refused as truncated
    before a large allocation."""
    import zipfile

    packed = min(info.compress_size, total)
    ratio = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: 1100}.get(info.compress_type, 4096)
    return min(info.file_size, packed * ratio + 64)


def _read_npy(f, size: int | None, where: str, name, magic: bytes, expect: tuple | None):
    """The array of a .npy stream whose magic bytes were just read; ``size``: the bytes
    left in the stream (None: unknown); ``expect``: the shape the program wants."""
    import numpy as np

    fmt = np.lib.format
    ver = f.read(2)
    if len(ver) < 2:
        raise ConfigError(f"{where}: truncated .npy header")
    version = (ver[0], ver[1])
    if version not in ((1, 0), (2, 0)):
        raise ConfigError(f"{where}: .npy format version {version[0]}.{version[1]} is not read "
                          "(1.0 and 2.0 are)")
    lenfmt = "<H" if version == (1, 0) else "<I"
    raw = f.read(struct.calcsize(lenfmt))
    if len(raw) < struct.calcsize(lenfmt):
        raise ConfigError(f"{where}: truncated .npy header")
    hlen = struct.unpack(lenfmt, raw)[0]
    if hlen > MAX_NPY_HEADER:
        raise ConfigError(f"{where}: .npy header of {hlen:,} bytes (at most {MAX_NPY_HEADER:,} are read)")
    header = f.read(hlen)
    if len(header) < hlen:
        raise ConfigError(f"{where}: truncated .npy header ({len(header)} of {hlen} bytes)")
    reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    try:
        shape, fortran, dtype = reader(io.BytesIO(raw + header), max_header_size=MAX_NPY_HEADER)
    except (ValueError, SyntaxError, TypeError) as e:
        raise ConfigError(f"{where}: malformed .npy header: {str(e)[:160]}") from None
    if dtype.hasobject:
        raise ConfigError(f"{where}: object arrays (pickled Python objects) are refused")
    if dtype.names is not None or dtype.subdtype is not None:
        raise ConfigError(f"{where}: structured dtype {str(dtype)[:80]}; expected a numeric array")
    if dtype.kind not in "biuf":
        raise ConfigError(f"{where}: dtype {dtype} is not numeric (expected bool, int, uint or float)")
    shape = tuple(int(d) for d in shape)
    if expect is not None and shape != tuple(expect):
        raise ConfigError(f"input {name!r} in {where} has shape {shape}; the program was compiled "
                          f"for {tuple(expect)}")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    left = None if size is None else size - len(raw) - hlen
    if left is not None and left < nbytes:
        raise ConfigError(f"{where}: truncated .npy: shape {shape} {dtype} needs {nbytes:,} bytes of "
                          f"data, {max(left, 0):,} are there")
    buf = bytearray(nbytes)
    view, got = memoryview(buf), 0
    while got < nbytes:
        n = f.readinto(view[got:])
        if not n:
            raise ConfigError(f"{where}: truncated .npy: shape {shape} {dtype} needs {nbytes:,} bytes "
                              f"of data, {got:,} are there")
        got += n
    arr = np.frombuffer(buf, dtype=dtype, count=count)
    return arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)


# ------------------------------------------------------------------ run --check

def compare_output(out, ref) -> dict:
    """Compare an interpreter output with its reference.  A check can never pass on
    non-finite values: a position where either side is NaN or +-Inf counts as a
    *non-finite mismatch* unless the other side holds the same thing there (NaN and NaN,
    or the same infinity).  The errors ``max_abs_err`` and ``max_rel_err`` (max|out - ref|
    / max|ref|) are computed over the positions finite on both sides only.

    Returns ``{"shape", "max_abs_err", "max_rel_err", "nonfinite_mismatches",
    "first_mismatch"`` (index list or None)``, "first_values"`` ((out, ref) there)``}``;
    a shape mismatch gives ``{"shape_mismatch": (out shape, ref shape)}``."""
    import numpy as np

    o, r = np.asarray(out), np.asarray(ref)
    if o.shape != r.shape:
        return {"shape_mismatch": (tuple(o.shape), tuple(r.shape))}
    o, r = o.astype(np.float64), r.astype(np.float64)
    fo, fr = np.isfinite(o), np.isfinite(r)
    both = fo & fr
    with np.errstate(invalid="ignore"):
        same = (np.isnan(o) & np.isnan(r)) | (~fo & (o == r))
    bad = ~both & ~same
    n_bad = int(bad.sum())
    first = [int(i) for i in np.argwhere(bad)[0]] if n_bad else None
    if both.any():
        diff = float(np.abs(o[both] - r[both]).max())
        scale = float(np.abs(r[both]).max())
    else:
        diff = scale = 0.0
    rel = diff / scale if scale else diff
    return {"shape": list(o.shape), "max_abs_err": diff, "max_rel_err": rel, "nonfinite_mismatches": n_bad,
            "first_mismatch": first,
            "first_values": (float(o[tuple(first)]), float(r[tuple(first)])) if first is not None else None}


def _summary_lines(info: dict) -> list[str]:
    out = [f"{info['file']['compiler']} binary, format {info['file']['format']}, "
           f"machine {info['machine']['hash'][:16]}",
           f"source: {info['source']} (sha256 {str(info['source_hash'])[:16]})",
           f"instructions: {info['instructions_total']:,} "
           f"({', '.join(f'{k} {v:,}' for k, v in info['opcodes'].items())})",
           f"constants: {info['constants_bytes']:,} bytes; DRAM image: {info['dram_bytes']:,} bytes",
           "tensors:"]
    for t in info["tensors"]:
        if t["role"] in ("input", "output"):
            out.append(f"  {t['role']:<7} {t['name']:<16} {'x'.join(map(str, t['shape'])):<16} "
                       f"{t['dtype']} @ {t['addr']:#x}")
    out.append(f"layers ({len(info['layers'])}):")
    for l in info["layers"]:
        sched = l.get("schedule")
        s = (f"f{sched['f_tile']} c{sched['c_tile']} h{sched['h_tile']} w{sched['w_tile']} "
             f"{sched['order']}{' db' if sched['double_buffer'] else ''} {sched['pe_order']}"
             + (f" px{sched['pxshift']}" if sched.get("pxshift") else "")) if sched else ""
        out.append(f"  {l['name']:<28} {l['op']:<15} {l['precision']:<8} pc {l['pc_start']}-{l['pc_end']} {s}")
    if info["host_ops"]:
        out.append("host ops: " + ", ".join(f"{h['op']}({', '.join(h['inputs'])})" for h in info["host_ops"]))
    return out


def report_dict(result) -> dict:
    return {
        "source": result.source, "source_hash": result.source_hash,
        "config": result.config.to_dict(),
        "inputs": {k: list(v) for k, v in result.input_shapes.items()},
        "layers": [dict(vars(i), weight_shape=list(i.weight_shape)) for i in result.layers],
        "multiplies": [r.to_dict() for r in result.multiplies],
        "totals": result.totals(),
        "cluster_counting": (result.cluster_counts()
                             if any(i.precision == "ternary" for i in result.layers) else None),
        "host_ops": [vars(h) for h in result.host_ops],
        "regions": [{"name": n, "composites": c} for n, c in result.regions],
        "stage_seconds": result.timings,
    }
