"""The ``.npy`` / ``.npz`` files dlac reads (``run --input``, ``--calib``) and writes
(``run --output``), as data: dlac's own reader (numeric dtypes only, header size capped,
names and shapes checked against the program before any data is allocated, every member
read inside error handling, no pickles) and a writer that never passes names as keyword
arguments (names checked by :func:`npz_name_problem`).  NumPy only.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct

from target_dlac.core.text import printable

from target_dlac.core.errors import ConfigError, DlacError

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


class Stackable(tuple):
    """An input shape that may also come as a stack of inputs on a new leading axis."""


def _load_inputs(path: str, prog, stacks: bool = False):
    """The inputs of ``prog`` from ``path``: a .npy (a program with one input) or a .npz
    keyed by input name.  Names, shapes and dtypes are checked against the program
    from the headers, before any array data is read.  ``stacks``: each array may also be
    ``N`` inputs stacked on a new leading axis (the same ``N`` for every input); then a
    list of ``N`` input dicts is returned (one dict when nothing is stacked)."""
    expect = {t.name: (Stackable if stacks else tuple)(t.shape) for t in prog.inputs}
    data = _read_arrays(path, "input", expect)
    if not isinstance(data, dict):
        data = {next(iter(expect)): data}
    if not stacks:
        return data
    counts = {name: (len(a) if a.ndim == len(expect[name]) + 1 else None) for name, a in data.items()}
    if set(counts.values()) == {None}:
        return [data]
    if None in counts.values() or len(set(counts.values())) != 1:
        raise ConfigError(f"input file {path!r}: stacked inputs need the same number of samples on a new "
                          f"leading axis for every input; got {counts}")
    n = next(iter(counts.values()))
    return [{name: a[i] for name, a in data.items()} for i in range(n)]


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
    stacked = isinstance(expect, Stackable) and len(shape) == len(expect) + 1 and shape[1:] == tuple(expect) \
        and shape[0] >= 1
    if expect is not None and shape != tuple(expect) and not stacked:
        more = f" (or N of them stacked: (N, {', '.join(map(str, expect))}))" if isinstance(expect, Stackable) else ""
        raise ConfigError(f"input {name!r} in {where} has shape {shape}; the program was compiled "
                          f"for {tuple(expect)}{more}")
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
