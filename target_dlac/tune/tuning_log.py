"""The autotuner's log: append-only JSON lines, one record per tuned layer.

A record::

    {"key": {"op", "shape": {ConvShape fields}, "weights_sha256", "precision",
             "has_scale", "machine"},
     "schedule": Schedule.to_dict(), "cycles": int, "default_cycles": int,
     "lower_bound": int, "trials": int, "strategy": str, "time": float (unix seconds),
     "layer": str (display name)}

(``lower_bound`` and ``layer`` are informative: a record without them is still valid.)

The key names what the schedule's cycle count depends on: the layer's op and shape
(with its activation dtype), the weights themselves (a ternary layer's cost follows
its non-zero pattern, so the key holds the sha256 of the weight bytes), the weight
precision, whether the epilogue scales, and the machine (:meth:`Machine.hash`).

The log is the tuner's state: :func:`append` writes one line and ``fsync``\\ s it, so a
process killed with ``kill -9`` loses at most the line being written; :func:`load`
skips a torn last line (and any malformed line), counting them; a layer whose key
already has a record is not tuned again.  Only ``json`` parses the file: nothing in it
is ever executed.

A record is checked for plausibility before it is used (a hand-edited or corrupted
record must not win silently: :func:`best` prefers the least cycles, so a record
claiming 0 cycles would replace the real one).  :func:`check_records`, on every valid
record of a log (``dlac compile --tuning-log`` and resuming ``dlac tune``): at least 1
cycle and 1 trial, ``cycles <= default_cycles`` (the default schedule is always trial
0), ``lower_bound``, if present, an int of at most ``cycles``.  :func:`check_for_layer`,
on the record chosen for a layer: its schedule passes :func:`schedule.schedule_problems`
for the layer and machine (it fits the buffers), and its cycles are at least the
layer's lower bounds under it (:func:`costmodel.layer_lower_bound`,
:func:`costmodel.cycles_lower_bound`).  An implausible record is an error
(:class:`TuningLogError`, naming the file, the line and the layer), not a skipped
line: the user removes the line (the layer is then tuned again, or keeps its default
schedule) rather than getting a binary built from a schedule nobody tuned.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields

import numpy as np

from target_dlac.core.errors import CodegenError, DlacError

from target_dlac.codegen.schedule import ConvShape, Schedule

KEY_FIELDS = ("op", "shape", "weights_sha256", "precision", "has_scale", "machine")
_SHAPE_FIELDS = tuple(f.name for f in fields(ConvShape))
#: activations whose layers' keys carry no ``act`` (the keys of logs written before the
#: other activations ran on dLAC; they cost the same)
_OLD_ACTS = ("none", "relu", "clip")


def weights_sha256(w: np.ndarray) -> str:
    """sha256 of the weight array (dtype, shape and C-order bytes)."""
    w = np.ascontiguousarray(w)
    h = hashlib.sha256(f"{w.dtype.str}{tuple(w.shape)}".encode())
    h.update(w.tobytes())
    return h.hexdigest()


def layer_key(op: str, shape: ConvShape, weights: np.ndarray, precision: str, has_scale: bool,
              machine_hash: str) -> dict:
    sh = {k: getattr(shape, k) for k in _SHAPE_FIELDS}
    sh["pads"] = [int(p) for p in sh["pads"]]
    if sh.get("groups") == 1:           # ungrouped: the key of logs written before groups existed
        del sh["groups"]
    if sh.get("act") in _OLD_ACTS:      # an epilogue that existed before activations were costed
        del sh["act"]
    return {"op": op, "shape": sh, "weights_sha256": weights_sha256(weights),
            "precision": precision, "has_scale": bool(has_scale), "machine": machine_hash}


def conv_layer_key(layer, machine_hash: str) -> dict:
    """The key of a :class:`target_dlac.codegen.composites.ConvLayer`."""
    return layer_key(layer.op, layer.shape, layer.weights.w, layer.precision, layer.has_scale,
                     machine_hash)


def key_str(key: dict) -> str:
    """Canonical string of a key (dictionary key of :func:`best`)."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def append(path, record: dict) -> None:
    """Append ``record`` as one line, flushed and fsynced before returning.  If the file
    ends in a torn line (a writer was killed mid-line), a newline is written first so the
    new record stays a line of its own."""
    line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    with open(path, "ab") as f:
        if f.tell() > 0:
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    line = "\n" + line
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())


class TuningLogError(DlacError):
    """A record of a tuning log is implausible (see the module docstring)."""


class Records(list):
    """The valid records of a log, in file order, with counts of what was skipped:
    ``torn`` (an unterminated, unparsable last line), ``malformed`` (lines that are not a
    JSON object), ``invalid`` (JSON objects with a missing or bad field, e.g. a schedule
    dict that is not a schedule).  ``path``: the log's path; ``lines``: each record's
    line number (from 1) in the file."""

    def __init__(self, items=(), torn: int = 0, malformed: int = 0, invalid: int = 0,
                 path=None, lines=()):
        super().__init__(items)
        self.torn, self.malformed, self.invalid = torn, malformed, invalid
        self.path, self.lines = path, list(lines)

    @property
    def skipped(self) -> int:
        return self.torn + self.malformed + self.invalid

    def line_of(self, rec) -> int | None:
        """The line number of ``rec`` (this very object), or ``None``."""
        for r, n in zip(self, self.lines):
            if r is rec:
                return n
        return None

    def where(self, rec) -> str:
        """``"tuning log 'PATH', line N"`` of ``rec``, for error messages."""
        n = self.line_of(rec)
        path = "the tuning log" if self.path is None else f"tuning log {str(self.path)!r}"
        return path if n is None else f"{path}, line {n}"


def _is_int(v, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def parse_schedule(d) -> Schedule | None:
    """The :class:`Schedule` of a record's dict (:meth:`Schedule.from_dict`, strict), or
    ``None`` if it is not a valid one."""
    try:
        return Schedule.from_dict(d)
    except CodegenError:
        return None


def valid_record(rec) -> bool:
    if not isinstance(rec, dict):
        return False
    key = rec.get("key")
    if not isinstance(key, dict) or any(k not in key for k in KEY_FIELDS):
        return False
    if not isinstance(key["shape"], dict) or not isinstance(key["weights_sha256"], str):
        return False
    if parse_schedule(rec.get("schedule")) is None:
        return False
    return all(_is_int(rec.get(k)) for k in ("cycles", "default_cycles", "trials"))


def load(path) -> Records:
    """Every valid record of the log at ``path`` (none if the file does not exist)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return Records(path=path)
    lines = data.split(b"\n")
    out = Records(path=path)
    for i, raw in enumerate(lines):
        last = i == len(lines) - 1          # text after the final newline: unterminated
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            if last:
                out.torn += 1
            else:
                out.malformed += 1
            continue
        if not isinstance(rec, dict):
            out.malformed += 1
        elif not valid_record(rec):
            out.invalid += 1
        else:
            out.append(rec)
            out.lines.append(i + 1)
    return out


def best(records) -> dict:
    """``{key_str: record}``: the record of least cycles per key (the earliest on ties)."""
    out: dict = {}
    for rec in records:
        k = key_str(rec["key"])
        if k not in out or rec["cycles"] < out[k]["cycles"]:
            out[k] = rec
    return out


def record_problem(rec) -> str | None:
    """What makes a valid record implausible on its own (no layer needed), or ``None``."""
    cyc, dflt, trials = rec["cycles"], rec["default_cycles"], rec["trials"]
    if cyc < 1:
        return f"it claims {cyc} cycles (a layer takes at least 1)"
    if trials < 1:
        return f"it claims {trials} trials (the default schedule is always trial 0)"
    if dflt < cyc:
        return (f"it claims {cyc:,} cycles, more than its default schedule's {dflt:,} (the "
                f"default is always a trial, so the tuned schedule is never worse)")
    b = rec.get("lower_bound")
    if b is not None and not _is_int(b):
        return f"its lower_bound {b!r} is not a non-negative integer"
    if b is not None and b > cyc:
        return f"it claims {cyc:,} cycles, below its own lower bound of {b:,}"
    return None


def _name(rec) -> str:
    """`` (layer NAME)`` from the record's informative ``layer`` field (text from the file:
    quoted unless short and printable)."""
    n = rec.get("layer")
    if not isinstance(n, str) or not n:
        return ""
    return f" (layer {n if n.isprintable() and len(n) <= 100 else repr(n[:100])})"


def check_records(records: Records) -> None:
    """Raise :class:`TuningLogError` on the first record of ``records`` (from :func:`load`)
    that :func:`record_problem` finds implausible, naming the file, its line and the
    layer it was tuned for."""
    for rec in records:
        why = record_problem(rec)
        if why is not None:
            raise TuningLogError(f"{records.where(rec)}{_name(rec)}: implausible record: {why}; "
                                 f"delete the line")


def layer_problem(rec, shape: ConvShape, weights, has_scale: bool, machine) -> str | None:
    """What makes ``rec`` implausible for the layer (``shape``, its
    :class:`LayerWeights`, ``has_scale``) on ``machine``: its schedule does not fit, or
    its cycles are below the layer's lower bounds under that schedule.  ``None``: plausible."""
    from target_dlac.tune import costmodel
    from target_dlac.codegen.schedule import schedule_problems

    why = record_problem(rec)
    if why is not None:
        return why
    sched = parse_schedule(rec["schedule"])
    malformed, problems = schedule_problems(shape, sched, machine, weights.max_bytes)
    if problems:
        return f"its schedule {sched} {'is malformed' if malformed else 'does not fit'}: " + \
            "; ".join(problems)
    # with zero activations skipped a record may hold expected cycles (dlac tune --calib):
    # bounds that hold for every input (an all-zero one skips every step)
    skipped = machine.act_skip != "none"
    bound = max(costmodel.cycles_lower_bound(shape, sched, machine, weights, has_scale=has_scale,
                                             live_ratio={sched.pxshift: 0.0} if skipped else None),
                costmodel.layer_lower_bound(shape, sched, machine, weights, has_scale=has_scale,
                                            skipped_acts=skipped))
    if rec["cycles"] < bound:
        return (f"it claims {rec['cycles']:,} cycles, below the layer's lower bound of {bound:,} "
                f"cycles under its schedule {sched}")
    return None


def check_for_layer(records: Records, rec, layer, machine) -> None:
    """Raise :class:`TuningLogError` if ``rec`` (of ``records``, matching ``layer``'s key: a
    :class:`target_dlac.codegen.composites.ConvLayer`) is implausible for the layer on ``machine``
    (:func:`layer_problem`), naming the file, the line and the layer."""
    why = layer_problem(rec, layer.shape, layer.weights, layer.has_scale, machine)
    if why is not None:
        where = records.where(rec) if isinstance(records, Records) else "the tuning log"
        raise TuningLogError(f"{where} (layer {layer.name}): implausible record: {why}; delete the "
                             f"line to tune the layer again or keep its default schedule")


def schedule_resolver(records, machine):
    """``(resolve, counts)``: ``resolve(ConvLayer)`` gives the schedule of the best record
    whose key matches the layer (``None``: keep the default), for the codegen's
    ``schedules``; ``counts`` = ``{"tuned_layers", "layers"}`` as the codegen asks.
    ``records``: from :func:`load`; a record must be plausible for its layer
    (:func:`check_for_layer`), else :class:`TuningLogError` naming
    the file, the line and the layer."""
    best_of = best(records)
    mh = machine.hash()
    counts = {"tuned_layers": 0, "layers": 0}
    checked: set = set()        # id() of the records found plausible (the codegens may ask again)

    def resolve(layer):
        counts["layers"] += 1
        rec = best_of.get(key_str(conv_layer_key(layer, mh)))
        if rec is None:
            return None
        if id(rec) not in checked:
            check_for_layer(records, rec, layer, machine)
            checked.add(id(rec))
        counts["tuned_layers"] += 1
        return parse_schedule(rec["schedule"])

    return resolve, counts
