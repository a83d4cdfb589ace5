"""Argument parsing and small helpers of the ``dlac`` command line (kept apart from the
click commands of :mod:`compiler.cli`, :mod:`compiler.cli_model` and
:mod:`compiler.cli_binary`; none of them imports TVM or torch)."""

from __future__ import annotations

import json
import math
import os
import stat

from target_dlac.core.text import printable  # noqa: F401 - re-exported for the CLI

from compiler.arrays_io import npz_name_problem  # noqa: F401 - re-exported
from target_dlac.core.errors import ConfigError


def parse_input_shapes(specs) -> dict:
    from compiler.frontend_common import parse_shape

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
            from compiler.config import precision_file

            weights, act, _ = precision_file(spec)
            out.update(weights)
            if acts is not None:
                acts.update(act)
            continue
        pattern, sep, prec = spec.rpartition("=")
        if not sep or not pattern:
            raise ConfigError(f"--precision {spec!r}: expected PATTERN=PRECISION (e.g. 'layer4.*=fp32')")
        out[pattern] = prec
    return out


def _machine(path):
    from target_dlac.isa.machine import Machine

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


# ------------------------------------------------------------------ run --check

def compare_output(out, ref, step=None) -> dict:
    """Compare an interpreter output with its reference.  A check can never pass on
    non-finite values: a position where either side is NaN or +-Inf counts as a
    *non-finite mismatch* unless the other side holds the same thing there (NaN and NaN,
    or the same infinity).  The errors ``max_abs_err`` and ``max_rel_err`` (max|out - ref|
    / max|ref|) are computed over the positions finite on both sides only.

    Returns ``{"shape", "max_abs_err", "max_rel_err", "nonfinite_mismatches",
    "first_mismatch"`` (index list or None)``, "first_values"`` ((out, ref) there)``}``;
    a shape mismatch gives ``{"shape_mismatch": (out shape, ref shape)}``.

    ``step``: for an activation-quantized output (``dequantize(quantize(v), scale, zp)``),
    its quantization step (the scale, a scalar or an array that broadcasts against the
    output).  Then also ``"steps"``: ``{"exact", "one_step", "more"}`` (how many finite
    values are off by 0, exactly 1 and more than 1 steps, ``round(|out - ref| / step)``)
    and ``"max_steps"``; and ``"top1"``: ``{"rows", "agree", "near_tie"}`` over the rows
    of the last axis (rank >= 1, more than one class): ``agree`` rows have the same argmax,
    ``near_tie`` rows do not, but the reference's value at the output's argmax is within
    one step of the reference's maximum (a tie one step can break either way)."""
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
    res = {"shape": list(o.shape), "max_abs_err": diff, "max_rel_err": rel, "nonfinite_mismatches": n_bad,
           "first_mismatch": first,
           "first_values": (float(o[tuple(first)]), float(r[tuple(first)])) if first is not None else None}
    if step is not None:
        s = np.broadcast_to(np.asarray(step, np.float64), o.shape)
        with np.errstate(invalid="ignore", divide="ignore"):
            k = np.rint(np.abs(o - r)[both] / s[both])
        res["steps"] = {"exact": int((k == 0).sum()), "one_step": int((k == 1).sum()),
                        "more": int((k > 1).sum())}
        res["max_steps"] = int(k.max()) if k.size else 0
        if o.ndim >= 1 and o.shape[-1] > 1 and o.size:
            o2, r2, s2 = (a.reshape(-1, o.shape[-1]) for a in (o, r, s))
            io, ir = np.argmax(o2, axis=1), np.argmax(r2, axis=1)
            rows = np.arange(len(io))
            tie = (io != ir) & (r2[rows, io] >= r2[rows, ir] - s2[rows, io] * (1 + 1e-6))
            res["top1"] = {"rows": len(io), "agree": int((io == ir).sum()), "near_tie": int(tie.sum())}
    return res


def _low_bit_note(info: dict) -> str:
    """``, act_bits 4: N ReLU output tensor(s) uint4`` for a low-bit integer binary (the
    metadata is untrusted: anything but a list of names counts as none)."""
    bits, names = info.get("act_bits", 8), info.get("low_bit_tensors")
    if bits == 8:
        return ""
    n = len(names) if isinstance(names, list) else 0
    return f", act_bits {bits}: {n} ReLU output tensor(s) uint{bits} (one per byte)"


def _summary_lines(info: dict) -> list[str]:
    out = [f"{info['file']['compiler']} binary, format {info['file']['format']}, "
           f"machine {info['machine']['hash'][:16]} ({info['machine']['pe_rows']}x{info['machine']['pe_cols']} "
           f"PEs, zero activations skipped: {info['machine'].get('act_skip', 'none')})",
           f"source: {info['source']} (sha256 {str(info['source_hash'])[:16]})",
           f"instructions: {info['instructions_total']:,} "
           f"({', '.join(f'{k} {v:,}' for k, v in info['opcodes'].items())})",
           f"constants: {info['constants_bytes']:,} bytes; DRAM image: {info['dram_bytes']:,} bytes",
           f"activations: {info.get('activations') or '?'}" + _low_bit_note(info),
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


def report_dict(result, fallbacks=None) -> dict:
    """The compile report (``compile --report-json``); ``fallbacks``: the codegen's, when a
    binary was built (layers it left on the host are reported as host layers)."""
    pl = result.placement(fallbacks)
    wsq = result.weight_sqnr()
    layers = []
    for i in result.layers:
        d = i.to_dict()
        where = pl["layers"].get(i.var)
        d["on"] = where["on"] if where else None
        d["host_reason"] = where["reason"] if where else None
        d["weight_sqnr_db"] = wsq.get(i.var)
        layers.append(d)
    return {
        "source": result.source, "source_hash": result.source_hash,
        "config": result.config.to_dict(),
        "inputs": {k: list(v) for k, v in result.input_shapes.items()},
        "layers": layers,
        "multiplies": [r.to_dict() for r in result.multiplies],
        "totals": result.totals(fallbacks),
        "cluster_counting": (result.cluster_counts(fallbacks=fallbacks)
                             if any(i.precision == "ternary" for i in result.layers) else None),
        "placement": ({k: pl[k] for k in ("layer_counts", "macs", "other_macs")} if pl["known"] else None),
        "warnings": result.host_warnings(fallbacks),
        "host_ops": [vars(h) for h in result.host_ops],
        "regions": [{"name": n, "composites": c} for n, c in result.regions],
        "stage_seconds": result.timings,
    }
