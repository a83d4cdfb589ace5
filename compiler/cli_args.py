"""Argument parsing and small helpers of the ``dlac`` command line (kept apart from the
click commands in :mod:`compiler.cli`; none of them imports TVM or torch)."""

from __future__ import annotations

from .errors import ConfigError


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


def _load_npz(path: str, what: str) -> dict:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            if isinstance(data, np.ndarray):
                raise ConfigError(f"{what} {path!r}: expected a .npz keyed by input name")
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path!r} not found") from None
    except (ValueError, OSError) as e:
        raise ConfigError(f"{what} file {path!r} is not a .npz array file: {e}") from None


def _load_inputs(path: str, prog) -> dict:
    import numpy as np

    names = [t.name for t in prog.inputs]
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"input file {path!r} not found") from None
    except (ValueError, OSError) as e:
        raise ConfigError(f"input file {path!r} is not a .npy/.npz array file: {e}") from None
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise ConfigError(f"{path}: a .npy holds one array; the program takes {names} (use .npz)")
        return {names[0]: data}
    with data:
        return {k: data[k] for k in data.files}


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
