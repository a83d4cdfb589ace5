"""The inputs of ``dlac report``: what kind each file is, read from its content.

:func:`load_input` reads one file and returns a :class:`ReportInput` of one of four kinds,
told apart by their content, never by the file name:

* ``binary``: a ``.dlac`` binary (it starts with the container's magic bytes); read and
  validated by :func:`target_dlac.binary.container.from_bytes`; ``data`` is
  :func:`target_dlac.binary.inspect.describe` of it plus ``meta`` (the META section);
* ``run``: a run report (``dlac run --report-json``; one JSON object with ``cycles``
  holding ``total`` and a ``layers`` list), ``data`` the object as written;
* ``sweep``: a sweep file (``dlac sweep``; JSON lines, line 1 an object of ``kind``
  ``"dlac-sweep"``), ``data`` = ``{"header": ..., "points": [point records]}`` (a torn
  last line, the sweep was killed while writing it, is dropped and counted in ``torn``);
* ``tuning``: a tuning log (``dlac tune``; JSON lines read by
  :func:`target_dlac.tune.tuning_log.load`, at least one valid record), ``data`` =
  ``{"records": [...], "skipped": n}``.

A file of none of these kinds, a missing file, or one whose structure is broken (a run
report whose ``layers`` is not a list of objects, ...) is a :class:`ConfigError` naming
the file.  Only ``json`` parses text: nothing read is executed.  Files over
:data:`MAX_BYTES` are refused (a report of that size is not one dlac wrote).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from target_dlac.core.errors import ConfigError, DlacError

KINDS = ("binary", "run", "sweep", "tuning")
MAX_BYTES = 1 << 30
_MAGIC = b"DLAC\x00BIN"


@dataclass
class ReportInput:
    kind: str
    path: str
    data: dict


def _bad(path: str, why: str) -> ConfigError:
    return ConfigError(f"{path!r}: {why}")


def load_input(path: str) -> ReportInput:
    """Read ``path`` and tell its kind (see the module docstring)."""
    try:
        size = os.path.getsize(path)
        if os.path.isdir(path):
            raise _bad(path, "is a directory, not a report input")
        if size > MAX_BYTES:
            raise _bad(path, f"{size:,} bytes, over the {MAX_BYTES:,} a report input may have")
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise _bad(path, "not found") from None
    except OSError as e:
        raise _bad(path, f"cannot be read ({e.strerror or e})") from None
    if data.startswith(_MAGIC):
        return ReportInput("binary", path, _binary(path, data))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _not_an_input(path) from None
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        if isinstance(obj.get("cycles"), dict) and "layers" in obj:
            return ReportInput("run", path, _run(path, obj))
        if obj.get("kind") == "dlac-sweep":          # a sweep header with no point yet
            return ReportInput("sweep", path, _sweep(path, text))
        if "key" in obj and "schedule" in obj:       # a tuning log of one record
            return ReportInput("tuning", path, _tuning(path))
        raise _not_an_input(path)
    first = text.lstrip().split("\n", 1)[0]
    try:
        head = json.loads(first)
    except ValueError:
        raise _not_an_input(path) from None
    if isinstance(head, dict) and head.get("kind") == "dlac-sweep":
        return ReportInput("sweep", path, _sweep(path, text))
    if isinstance(head, dict) and "key" in head and "schedule" in head:
        return ReportInput("tuning", path, _tuning(path))
    raise _not_an_input(path)


def _not_an_input(path: str) -> ConfigError:
    return _bad(path, "not a dLAC binary, run report (dlac run --report-json), sweep file "
                      "(dlac sweep) or tuning log (dlac tune)")


def _binary(path: str, data: bytes) -> dict:
    from target_dlac.binary.container import from_bytes
    from target_dlac.binary.inspect import describe

    try:
        prog = from_bytes(data)
    except DlacError as e:
        raise _bad(path, f"a damaged dLAC binary: {e}") from None
    info = describe(prog)
    info["meta"] = prog.meta
    return info


def _run(path: str, obj: dict) -> dict:
    cyc, layers = obj["cycles"], obj["layers"]
    if not _is_int(cyc.get("total")):
        raise _bad(path, "a run report whose cycles.total is not an integer")
    if not isinstance(layers, list) or not all(isinstance(l, dict) and isinstance(l.get("name"), str)
                                               for l in layers):
        raise _bad(path, "a run report whose layers are not a list of objects with a name")
    for k in ("machine", "energy_pj", "area_breakdown_mm2", "energy_table"):
        if k in obj and obj[k] is not None and not isinstance(obj[k], dict):
            raise _bad(path, f"a run report whose {k} is not an object")
    for l in layers:
        if l.get("energy_pj") is not None and not isinstance(l["energy_pj"], dict):
            raise _bad(path, f"a run report whose layer {l['name'][:60]!r} has an energy_pj that is not an object")
    return obj


def _sweep(path: str, text: str) -> dict:
    lines = text.split("\n")
    torn = 0
    if lines and lines[-1].strip():                 # no final newline: the last line may be torn
        try:
            json.loads(lines[-1])
        except ValueError:
            lines, torn = lines[:-1], 1
    lines = [(n, ln) for n, ln in enumerate(lines, start=1) if ln.strip()]
    header = json.loads(lines[0][1])
    if not isinstance(header.get("params", {}), dict):
        raise _bad(path, "a sweep file whose header's params is not an object")
    points = []
    for n, ln in lines[1:]:
        try:
            rec = json.loads(ln)
        except ValueError:
            raise _bad(path, f"a sweep file whose line {n} is not JSON") from None
        if not isinstance(rec, dict) or rec.get("kind") != "point":
            raise _bad(path, f"a sweep file whose line {n} is not a point record")
        if not isinstance(rec.get("params", {}), dict) or not isinstance(rec.get("layers", []), list) \
                or not all(isinstance(l, dict) for l in rec.get("layers", [])):
            raise _bad(path, f"a sweep file whose line {n} has malformed params or layers")
        for k in ("energy_pj", "machine"):
            if rec.get(k) is not None and not isinstance(rec[k], dict):
                raise _bad(path, f"a sweep file whose line {n} has a {k} that is not an object")
        points.append(rec)
    return {"header": header, "points": points, "torn": torn}


def _tuning(path: str) -> dict:
    from target_dlac.tune.tuning_log import load

    recs = load(path)
    if not recs:
        raise _bad(path, "a tuning log without one valid record")
    return {"records": list(recs), "skipped": recs.skipped}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def number(v) -> float | None:
    """``v`` as a finite float, or ``None`` (absent, not a number, ``"nan"`` / ``"inf"``
    strings of :func:`compiler.cli_args.strict_json`, booleans)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if v == v and abs(v) != float("inf") else None
