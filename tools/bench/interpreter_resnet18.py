#!/usr/bin/env python
"""Wall time of the dLAC ISA interpreter on ResNet-18 vs the TVM CPU reference.

Compiles torchvision-shaped ResNet-18 (default QuantConfig: ternary, first/last
layer fp32), times codegen (build_program) and the .dlac container round trip,
then in the same run times the interpreter and, as the baseline, the TVM CPU
reference of the fold stage (both warmed up once) on the same input (median of
--repeat runs each).  Goal: interpreter / TVM <= 1.0.  Prints the simulated
cycles, the dense-equivalent TFLOP/s and the per-layer table from the RunReport.

    python tools/bench/interpreter_resnet18.py [--repeat 3] [--size 224] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time


def timed(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--json", metavar="FILE", help="write every number to FILE as JSON")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from compiler import QuantConfig, compile_model
    from target_dlac.core.atomic import atomic_write_text
    from compiler.build import build_program
    from compiler.models import randomize_bn, resnet18
    from compiler.reference import Reference
    from target_dlac.binary.container import from_bytes, to_bytes
    from target_dlac.sim.interpreter import run
    from target_dlac.isa.machine import Machine

    machine = Machine()
    cmd = shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]) if argv is None else repr(argv)
    print(f"command: {cmd}")
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}, Python {platform.python_version()}, "
          f"NumPy {np.__version__}, torch {torch.__version__}")
    print(f"dLAC machine: {machine.clock_mhz:g} MHz, {machine.area_mm2:g} mm^2, "
          f"{machine.pe_rows}x{machine.pe_cols} PEs, {machine.macs_per_cycle} MAC/cycle, "
          f"{machine.dram_bytes_per_cycle} B/cycle DRAM, hash {machine.hash()[:12]}", flush=True)

    torch.manual_seed(0)
    model = randomize_bn(resnet18()).eval()
    x = torch.randn(1, 3, args.size, args.size)
    xn = x.numpy()
    t0 = time.perf_counter()
    result = compile_model(model, (x,), config=QuantConfig())
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    program = build_program(result, machine)
    codegen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    blob = to_bytes(program)
    program = from_bytes(blob)
    container_s = time.perf_counter() - t0

    ref = Reference(result.reference_module("fold"))
    ref([xn])                                            # warm-up
    tvm_s, tvm_runs, ref_out = timed(lambda: ref([xn])[0], args.repeat)
    run(program, {"x": xn})                              # warm-up (NumPy/BLAS); each timed run
    interp_s, interp_runs, (outs, rep) = timed(lambda: run(program, {"x": xn}), args.repeat)  # fresh state
    out = outs["output_0"]
    rel_err = float(np.abs(out - ref_out).max() / np.abs(ref_out).max())
    cycles = rep.cycles["total"]

    print(f"\nResNet-18 {args.size}x{args.size}: {len(program.insns):,} instructions in the binary, "
          f"{len(blob) / 1e6:.1f} MB .dlac")
    print(f"compile {compile_s:.2f} s, codegen {codegen_s:.2f} s, container to_bytes+from_bytes "
          f"{container_s:.3f} s")
    print(f"\n{'layer':<24} {'op':<11} {'prec':<7} {'cycles':>11} {'skip x':>7} {'bal':>5} {'%bound':>7}")
    for l in rep.layers:
        print(f"{l.name[:24]:<24} {l.op[:11]:<11} {l.precision[:7]:<7} {l.cycles:>11,} "
              f"{l.zero_skip_speedup:>7.2f} {l.load_balance:>5.2f} {l.pct_of_bound:>6.0f}%")
    print(f"{'total':<24} {'':<11} {'':<7} {cycles:>11,}")
    skips = sorted(l.zero_skip_speedup for l in rep.layers if l.precision == "ternary")
    skip = {"min": skips[0], "median": statistics.median(skips), "max": skips[-1]} if skips else {}
    if skips:
        print(f"zero-skip speedup over {len(skips)} ternary layers: min {skip['min']:.2f}x, "
              f"median {skip['median']:.2f}x, max {skip['max']:.2f}x")

    ratio = interp_s / tvm_s
    print(f"\nmedian of {args.repeat}: interpreter {interp_s:.3f} s, TVM CPU reference {tvm_s:.3f} s "
          f"-> interpreter/TVM {ratio:.2f} ({'meets' if ratio <= 1.0 else 'misses'} goal <= 1.0)")
    print(f"max relative error vs reference: {rel_err:.3e}")
    print(f"simulated: {cycles:,} cycles ({rep.seconds * 1e3:.3f} ms at {machine.clock_mhz:g} MHz), "
          f"{cycles / interp_s:,.0f} simulated cycles per wall-second, "
          f"{rep.instructions:,} instructions executed")
    print(f"{rep.tflops_equiv:.3f} dense-equivalent TFLOP/s, {rep.tflops_per_mm2:.3f} TFLOP/s/mm^2"
          + (f"; {rep.host_ops} host op(s) not in the cycle count" if rep.host_ops else ""))

    if args.json:
        data = {"command": cmd, "size": args.size, "repeat": args.repeat,
                "host": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                         "tvm_num_threads": os.environ.get("TVM_NUM_THREADS")},
                "machine": rep.machine, "compile_s": compile_s, "codegen_s": codegen_s,
                "container_s": container_s, "container_bytes": len(blob),
                "interpreter_s": interp_s, "interpreter_runs_s": interp_runs,
                "tvm_s": tvm_s, "tvm_runs_s": tvm_runs, "interpreter_over_tvm": ratio,
                "max_rel_error": rel_err, "cycles_per_wall_s": cycles / interp_s,
                "zero_skip_ternary": skip, "report": rep.to_dict()}
        atomic_write_text(args.json, json.dumps(data, indent=1, default=float) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
