"""The sweep file (``dlac sweep -o SWEEP.jsonl``) and its CSV (docs/sweep.md).

Line 1 is the header (``kind: "dlac-sweep"``, the model, the compile options, the
parameters and their values, the sampling, the base machine, the number of points); each
further line is one point's record (:func:`compiler.sweep.evaluate`), appended and flushed
as it finishes, in any order.  :func:`resume` reads an existing file: the header must equal
the new sweep's (else a one-line error naming the field that differs), a torn last line
(the sweep was killed while writing it) is dropped, and the ids already there are skipped.
:func:`finish` rewrites the file atomically with the records sorted by id: records hold no
timings, so a resumed sweep's file equals an uninterrupted one byte for byte.
"""

from __future__ import annotations

import csv
import io
import json
import os

from target_dlac.core.atomic import atomic_write_text
from target_dlac.core.errors import ConfigError

KIND = "dlac-sweep"
VERSION = 1
#: a line longer than this is not a record dlac wrote (bounds what a resume reads)
MAX_LINE = 1 << 24


def dumps(obj) -> str:
    from compiler.cli_args import strict_json

    return strict_json(obj, sort_keys=True, separators=(",", ":"))


def resume(path: str, header: dict) -> dict[int, dict]:
    """``{id: record}`` already in ``path`` for a sweep with ``header`` (``{}`` if the file
    does not exist or is empty); truncates a torn last line."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return {}
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if not data.endswith(b"\n"):            # a torn last line: drop it
        good = len(data) - len(lines[-1])
        with open(path, "r+b") as f:
            f.truncate(good)
        lines = lines[:-1]
    lines = [ln for ln in lines if ln]
    if not lines:
        return {}
    try:
        old = json.loads(lines[0])
    except ValueError:
        raise ConfigError(f"{path}: line 1 is not a dlac sweep header; give a new -o file") from None
    if not isinstance(old, dict) or old.get("kind") != KIND:
        raise ConfigError(f"{path}: not a dlac sweep file (line 1 has no kind {KIND!r}); give a new -o file")
    want = json.loads(dumps(header))
    for k in sorted(set(old) | set(want)):
        if old.get(k) != want.get(k):
            raise ConfigError(f"{path}: written by a different sweep ({k} differs: "
                              f"{json.dumps(old.get(k))[:80]} in the file, {json.dumps(want.get(k))[:80]} now); "
                              "give a new -o file or the same options")
    done: dict[int, dict] = {}
    for n, ln in enumerate(lines[1:], start=2):
        if len(ln) > MAX_LINE:
            raise ConfigError(f"{path}: line {n} is over {MAX_LINE} bytes")
        try:
            rec = json.loads(ln)
        except ValueError:
            raise ConfigError(f"{path}: line {n} is not JSON") from None
        if not isinstance(rec, dict) or rec.get("kind") != "point" or not isinstance(rec.get("id"), int):
            raise ConfigError(f"{path}: line {n} is not a sweep point record")
        done[rec["id"]] = rec
    return done


def start(path: str, header: dict, resumed: bool):
    """The file opened for appending records (the header written first on a new file)."""
    f = open(path, "a", encoding="utf-8")
    if not resumed:
        f.write(dumps(header) + "\n")
        f.flush()
    return f


def append(f, records: list[dict]) -> None:
    for rec in records:
        f.write(dumps(rec) + "\n")
    f.flush()
    os.fsync(f.fileno())


def finish(path: str, header: dict, records: dict[int, dict]) -> None:
    """Rewrite ``path`` atomically: the header, then the records by id."""
    text = dumps(header) + "\n" + "".join(dumps(records[i]) + "\n" for i in sorted(records))
    atomic_write_text(path, text)


def read(path: str) -> tuple[dict, list[dict]]:
    """``(header, records)`` of a sweep file (for ``dlac report``)."""
    with open(path, encoding="utf-8") as f:
        lines = [ln for ln in f.read().split("\n") if ln.strip()]
    if not lines:
        raise ConfigError(f"{path}: empty")
    try:
        header = json.loads(lines[0])
        recs = [json.loads(ln) for ln in lines[1:]]
    except ValueError as e:
        raise ConfigError(f"{path}: not JSON lines ({e})") from None
    if not isinstance(header, dict) or header.get("kind") != KIND:
        raise ConfigError(f"{path}: not a dlac sweep file")
    return header, [r for r in recs if isinstance(r, dict) and r.get("kind") == "point"]


#: CSV columns after the parameters (``param.NAME``)
CSV_COLUMNS = ("id", "status", "error", "cycles", "latency_s", "energy_pj.total", "energy_pj.compute",
               "energy_pj.onchip", "energy_pj.dram", "energy_pj.static", "area_mm2", "edp_js",
               "tops_per_w", "pj_per_mac", "dense_macs", "pareto")


def csv_text(header: dict, records: list[dict], front: set[int]) -> str:
    """One row per point: ``param.NAME`` columns, then :data:`CSV_COLUMNS`; cells encoded as
    every CLI table's (:func:`compiler.tables.csv_cell`)."""
    from compiler.pareto import value
    from compiler.tables import csv_cell as _cell

    names = list(header["params"])
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([f"param.{n}" for n in names] + list(CSV_COLUMNS))
    for r in sorted(records, key=lambda r: r["id"]):
        row = [_cell(r["params"].get(n)) for n in names]
        for c in CSV_COLUMNS:
            row.append(_cell(r["id"] in front if c == "pareto" else value(r, c) if "." in c else r.get(c)))
        w.writerow(row)
    return out.getvalue()
