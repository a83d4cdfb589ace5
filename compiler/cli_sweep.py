"""``dlac sweep MODEL --param NAME=V1,V2,... -o SWEEP.jsonl``: a design-space sweep of the
model's conv / dense layers over machine parameters and compile options, costed by the
analytic cost model (default schedules), into a resumable JSONL file (:mod:`compiler.sweep`,
:mod:`compiler.sweep_file`, :mod:`compiler.sweep_run`); prints the Pareto front over
latency, energy and area and the best-EDP point.  Registered on the group in
:mod:`compiler.cli` as ``sweep_cmd``.  No TVM / torch import at import time."""

from __future__ import annotations

import time

import click

from compiler.cli_args import _machine, check_outputs, parse_input_shapes
from compiler.cli_common import _fail, _quant_config, _say, _say_table, model_options
from target_dlac.core.errors import ConfigError


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def front_table(records: list[dict], front: list[int], names: list[str]) -> str:
    head = ["id"] + names + ["latency_us", "energy_uJ", "area_mm2", "EDP_Js"]
    rows = [head]
    for i in front:
        r = records[i]
        rows.append([str(r["id"])] + [str(r["params"].get(n)) for n in names]
                    + [_fmt(r["latency_s"] * 1e6, ".2f"), _fmt(r["energy_pj"]["total"] * 1e-6, ".3f"),
                       _fmt(r["area_mm2"], ".3f"), _fmt(r["edp_js"], ".3e")])
    w = [max(len(row[c]) for row in rows) for c in range(len(head))]
    return "\n".join("  ".join(x.rjust(w[c]) for c, x in enumerate(row)) for row in rows)


@click.command("sweep")
@click.argument("model")
@click.option("--param", "params", multiple=True, required=True, metavar="NAME=V1,V2,...",
              help="A machine parameter (pe_rows, pe_cols, lanes, wgt_buf_kib, inp_buf_kib, "
                   "obuf_bytes_per_pe, dram_bytes_per_cycle, dma_latency, act_skip, ...) or compile "
                   "option (quant, cluster_size, swis_shifts, activations) and its values (repeatable).")
@click.option("-o", "--output", required=True, metavar="SWEEP.jsonl",
              help="Sweep file (also the resume state: points already there are skipped).")
@click.option("--random", "sample", type=int, metavar="N", help="N grid points at random (no replacement).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --random.")
@click.option("--jobs", type=int, metavar="N", help="Worker processes (default: CPU count).")
@click.option("--dask", metavar="ADDRESS", help="Dask distributed scheduler (tcp://host:port) instead of the pool.")
@click.option("--dask-timeout", type=float, default=60.0, show_default=True, metavar="S")
@click.option("--csv", "csv_out", metavar="FILE.csv", help="Also write one CSV row per point.")
@click.option("--activations", type=click.Choice(("fp32", "fp16")), default="fp32", show_default=True)
@model_options
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def sweep_cmd(model, params, output, sample, seed, jobs, dask, dask_timeout, csv_out, activations, quant,
              granularity, cluster_size, keep_first, keep_last, precisions, relu_thresholds, swis_shifts,
              swis_consecutive, input_shapes, machine, debug):
    """Cost MODEL's conv / dense layers on a grid (or random sample) of machines and compile options."""
    try:
        from compiler import sweep, sweep_file
        from compiler.pareto import DEFAULT_KEYS, pareto_front
        from compiler.sweep_run import compile_combos, header_of, run_sweep

        if jobs is not None and jobs < 1:
            raise ConfigError("--jobs must be at least 1")
        if not dask_timeout > 0:
            raise ConfigError("--dask-timeout must be positive")
        grid = sweep.parse_params(params)
        pts = sweep.points(grid, sample, seed)
        check_outputs([("-o", output), ("--csv", csv_out)], [("MODEL", model.split(":")[0]),
                                                              ("--machine", machine)])
        base_m = _machine(machine)
        base = base_m.to_dict()
        from target_dlac.isa.energy import machine_file_table
        table = machine_file_table(machine)
        compile_opts = {"quant": quant, "granularity": granularity, "cluster_size": cluster_size,
                        "swis_shifts": swis_shifts, "activations": activations}
        shapes = parse_input_shapes(input_shapes)

        def build(o):
            from compiler.pipeline import compile_model

            config = _quant_config(o["quant"], granularity, o["cluster_size"], precisions, (), o["swis_shifts"],
                                   swis_consecutive, keep_first, keep_last, relu_thresholds)
            return compile_model(model, config=config, input_shapes=shapes, machine=base_m)

        say = lambda s: click.echo(s, err=True)  # noqa: E731
        layers = compile_combos(model, pts, compile_opts, build, say)
        modelled = {"/".join(f"{k}={v}" for k, v in key) or "default": [l.name for l in ls]
                    for key, ls in layers.items()}
        header = header_of(model, compile_opts, grid, sample, seed, base, len(pts), modelled)
        t0 = time.monotonic()
        _, done = run_sweep(output, header, pts, layers, base, jobs=jobs, dask=dask, dask_timeout=dask_timeout,
                            table=table, say=say)
        dt = time.monotonic() - t0
        records = [done[i] for i in sorted(done)]
        front = pareto_front(records, DEFAULT_KEYS)
        if csv_out:
            from target_dlac.core.atomic import atomic_write_text

            atomic_write_text(csv_out, sweep_file.csv_text(header, records, {records[i]["id"] for i in front}))
        n_bad = sum(r["status"] != "ok" for r in records)
        click.echo(f"  {len(records)} points ({n_bad} invalid) in {dt:.1f} s", err=True)
        _say(f"Pareto front (latency, energy, area; {len(front)} of {len(records) - n_bad} valid points):")
        _say_table(front_table(records, front, list(grid)))
        ok = [r for r in records if r["status"] == "ok" and r["edp_js"] is not None]
        if ok:
            b = min(ok, key=lambda r: (r["edp_js"], r["id"]))
            _say(f"best EDP: point {b['id']} {b['params']}: {b['edp_js']:.3e} J s "
                 f"({b['latency_s'] * 1e6:.2f} us, {b['energy_pj']['total'] * 1e-6:.3f} uJ, "
                 f"{b['area_mm2']:.3f} mm^2)")
        _say(f"figures cover the conv/dense layers on dLAC only (pooling, element-wise and host layers "
             f"are not costed); file: {output}")
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
        _fail(e, debug)
