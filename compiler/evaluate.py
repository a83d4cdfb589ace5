"""Accuracy of a model under several quantization configs, through the TVM CPU
reference build of each quantized graph."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from compiler.config import QuantConfig


@dataclass
class EvalRow:
    name: str
    accuracy: float
    images: int
    replaced_share: float
    compile_s: float
    run_s: float


def batched_logits(ref, x: np.ndarray, batch: int) -> np.ndarray:
    """Logits of a compiled reference over ``x`` in fixed-size batches (the last one
    zero-padded), for a graph compiled at batch size ``batch``."""
    out = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
        out.append(ref(chunk)[0][:n])
    return np.concatenate(out)


def predict(ref, x: np.ndarray, batch: int) -> np.ndarray:
    """Class predictions of a compiled reference over ``x`` in fixed-size batches."""
    return batched_logits(ref, x, batch).argmax(axis=1)


def evaluate(model, configs: dict[str, QuantConfig], x: np.ndarray, y: np.ndarray,
             batch: int = 100, progress=None) -> list[EvalRow]:
    """Compile ``model`` once per config (batch ``batch``) and measure accuracy on ``(x, y)``."""
    import torch

    from compiler.pipeline import compile_model
    from compiler.reference import Reference

    example = torch.from_numpy(x[:batch].copy())
    if len(example) < batch:
        example = torch.zeros((batch, *x.shape[1:]), dtype=torch.float32)
    rows = []
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        result = compile_model(model, (example,), config=cfg)
        ref = Reference(result.reference_module())
        t1 = time.perf_counter()
        pred = predict(ref, x, batch)
        t2 = time.perf_counter()
        row = EvalRow(name, float((pred == y).mean()), len(y), result.totals()["replaced_share"],
                      t1 - t0, t2 - t1)
        rows.append(row)
        if progress:
            progress(row)
    return rows


def standard_configs() -> dict[str, QuantConfig]:
    """float vs ternary (every layer) vs ternary with first/last layers in fp32."""
    return {
        "float (fp32 weights)": QuantConfig.full_precision(),
        "ternary, all layers": QuantConfig.all_ternary(),
        "ternary, first/last fp32": QuantConfig(),
    }


def format_rows(rows: list[EvalRow]) -> str:
    lines = [f"{'configuration':<28} {'accuracy':>9} {'images':>7} {'mults replaced':>15} "
             f"{'compile s':>10} {'run s':>7}"]
    for r in rows:
        lines.append(f"{r.name:<28} {100 * r.accuracy:>8.2f}% {r.images:>7} "
                     f"{100 * r.replaced_share:>14.1f}% {r.compile_s:>10.1f} {r.run_s:>7.1f}")
    return "\n".join(lines)
