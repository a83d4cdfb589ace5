"""Count the multiplications a cluster-scaled ternary network still needs.

Source: Mellempudi et al., cluster-based ternary / 4-bit weights with dynamic
fixed point, arXiv 1701.08978 (summarised in /work/shared/docs/papers.md §2).
Filters are grouped into clusters of N; each cluster shares one scale factor and
its weights are ternary, so inside a cluster the products ``w * x`` are 8-bit
accumulations (add, subtract or skip) and only the cluster's partial sum is
multiplied by the scale.  The paper reports "~85% of multiplications replaced by
8-bit accumulations at N=4, ~98% at N=64" on ResNet-101.

Counting rule (the one that reproduces those numbers, papers.md section 2):

* one real multiply per cluster of ``N`` k x k kernel slices of ONE output
  channel, per output element.  A k x k conv with ``C`` input channels (per
  group) does ``C*k*k`` MACs per output element; those are split into
  ``C/N`` clusters, each costing one multiply.  So a k x k conv keeps
  ``1/(N*k*k)`` of its multiplies and replaces ``1 - 1/(N*k*k)``; a 1x1 conv
  (and a dense layer, kh = kw = 1) replaces ``1 - 1/N``.
* the first conv and the classifier (FC) stay full precision: nothing replaced,
  but their MACs count in the denominator.

ResNet-101 at 224x224, batch 1: 84.7% replaced at N=4, 97.6% at N=64.  Counting
``1 - 1/N`` per layer instead (``cluster_replaced(..., kh=1, kw=1, ...)`` for
every layer) gives 75% at N=4, the FGQ follow-up's (arXiv 1705.01462) number.

Cluster larger than the channel count (N > C): a cluster is made of kernel
slices of one output channel, and an output channel only has ``C`` of them
(``C = in_channels / groups``).  So the effective cluster size is ``min(N, C)``:
at least one multiply per output element remains (the per-output-channel scale
must be applied once).  Without the cap, ``dense / (N*k*k)`` would fall below
the number of output elements, i.e. fewer multiplies than scaled outputs,
which no hardware can do.  For ResNet-50/101 every replaced layer has C >= 64,
so N <= 64 never hits the cap (the paper's 97.6% at N=64 is the same either
way); it matters for N > 64, for narrow nets and for depthwise convs (C = 1:
a cluster is one k x k slice, ``1 - 1/(k*k)`` replaced whatever N).  ``n=None`` / ``"layer"`` means the cluster is all ``C``
slices of an output channel (one scale per filter, one multiply per output
element).  The cap needs ``cin``; without it ``n`` is used as given
(``n=None`` then raises).

Rounding: integer arithmetic, ``left = ceil(dense_macs / (n_eff * kh * kw))``,
``replaced = dense_macs - left``.  When ``n_eff`` divides ``C`` (all powers of
two in ResNets) this is exact: ``out_elements * C / n_eff``.  When it does not,
it is the amortised count (the last, partial cluster of each output channel is
charged a fraction of a multiply), rounded up once over the layer; the exact
per-channel count would be ``out_elements * ceil(C / n_eff)``.

Pure Python, no TVM; ``layers_from_torch`` imports torch lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence


@dataclass(frozen=True)
class LayerCount:
    """Multiplies of one conv / dense layer: ``dense_macs = replaced + left``."""

    name: str
    kind: str          # "conv" | "dense"
    k_h: int
    k_w: int
    dense_macs: int    # MACs of the full-precision layer
    replaced: int      # multiplies turned into accumulations
    left: int          # real multiplies that remain
    precision: str     # "fp32" (not replaced) | "ternary"
    cin: int | None = None   # input channels per group (caps the cluster size)

    @property
    def replaced_share(self) -> float:
        return self.replaced / self.dense_macs if self.dense_macs else 0.0


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def cluster_replaced(dense_macs: int, kh: int, kw: int, n: int | str | None,
                     cin: int | None = None) -> tuple[int, int]:
    """``(replaced, left)`` for a layer of ``dense_macs`` MACs, ``kh x kw`` kernels.

    ``n`` is the cluster size in kernel slices of one output channel; ``None``
    or ``"layer"`` means all ``cin`` slices of an output channel.  With ``cin``
    given, the cluster is capped at ``cin`` (see the module docstring).
    ``left = ceil(dense_macs / (n_eff * kh * kw))``, ``replaced = dense - left``.
    """
    dense_macs, kh, kw = int(dense_macs), int(kh), int(kw)
    if dense_macs < 0 or kh < 1 or kw < 1:
        raise ValueError(f"bad layer shape: dense_macs={dense_macs}, kernel {kh}x{kw}")
    if n is None or n == "layer":
        if cin is None:
            raise ValueError("n=None/'layer' needs cin (input channels per group)")
        n_eff = int(cin)
    else:
        if isinstance(n, str) or int(n) != n or int(n) < 1:
            raise ValueError(f"cluster size must be a positive int, None or 'layer', got {n!r}")
        n_eff = int(n)
        if cin is not None:
            n_eff = min(n_eff, int(cin))
    if n_eff < 1:
        raise ValueError(f"cin must be >= 1, got {cin!r}")
    if dense_macs == 0:
        return 0, 0
    left = _ceil_div(dense_macs, n_eff * kh * kw)
    return dense_macs - left, left


def _field(layer: Any, key: str, index: int, default: Any = ...) -> Any:
    if isinstance(layer, dict):
        if key in layer:
            return layer[key]
        if key == "kh" and "k_h" in layer:
            return layer["k_h"]
        if key == "kw" and "k_w" in layer:
            return layer["k_w"]
    elif isinstance(layer, (tuple, list)):
        if index < len(layer):
            return layer[index]
    elif hasattr(layer, key):
        return getattr(layer, key)
    if default is ...:
        raise KeyError(f"layer {layer!r} has no {key!r}")
    return default


def count_layers(layers: Sequence[Any], n: int | str | None,
                 full_precision: Iterable[str] = ("first", "last")) -> list[LayerCount]:
    """Count every layer of ``layers`` (network order) at cluster size ``n``.

    A layer is a dict with ``name, kind, kh, kw, dense_macs`` and optional
    ``cin``, or a tuple ``(name, kind, kh, kw, dense_macs[, cin])``.
    ``full_precision`` holds ``"first"``, ``"last"`` and/or layer names: those
    layers keep all their multiplies (precision ``"fp32"``); the others are
    ``"ternary"``.
    """
    fp = set(full_precision)
    out: list[LayerCount] = []
    for i, layer in enumerate(layers):
        name = str(_field(layer, "name", 0))
        kind = str(_field(layer, "kind", 1))
        if kind not in ("conv", "dense"):
            raise ValueError(f"layer {name}: kind must be 'conv' or 'dense', got {kind!r}")
        kh, kw = int(_field(layer, "kh", 2)), int(_field(layer, "kw", 3))
        dense = int(_field(layer, "dense_macs", 4))
        cin = _field(layer, "cin", 5, None)
        cin = None if cin is None else int(cin)
        keep = (name in fp or ("first" in fp and i == 0)
                or ("last" in fp and i == len(layers) - 1))
        if keep:
            replaced, left, prec = 0, dense, "fp32"
        else:
            replaced, left = cluster_replaced(dense, kh, kw, n, cin)
            prec = "ternary"
        out.append(LayerCount(name, kind, kh, kw, dense, replaced, left, prec, cin))
    return out


def totals(rows: Iterable[LayerCount]) -> dict:
    """Sum over ``rows``: ``dense``, ``replaced``, ``left`` MACs and ``replaced_share``."""
    rows = list(rows)
    dense = sum(r.dense_macs for r in rows)
    replaced = sum(r.replaced for r in rows)
    left = sum(r.left for r in rows)
    return {"dense": dense, "replaced": replaced, "left": left,
            "replaced_share": replaced / dense if dense else 0.0}


def layers_from_torch(module, example_input) -> list[dict]:
    """Run ``module`` once on ``example_input`` and record every Conv2d / Linear call.

    Returns dicts ``name`` (module path), ``kind`` ("conv"/"dense"), ``kh``,
    ``kw``, ``dense_macs`` and ``cin`` (input channels per group), in call
    order.  Conv: ``out elements * (in_channels / groups) * kh * kw``; Linear:
    ``batch * in_features * out_features`` (batch = every leading dim).
    """
    import torch
    from torch import nn

    records: list[dict] = []
    hooks = []

    def hook(name, mod):
        def fn(_m, _inp, out):
            if isinstance(mod, nn.Conv2d):
                kh, kw = mod.kernel_size
                cin = mod.in_channels // mod.groups
                records.append({"name": name, "kind": "conv", "kh": int(kh), "kw": int(kw),
                                "dense_macs": int(out.numel()) * cin * int(kh) * int(kw),
                                "cin": cin})
            else:
                batch = int(out.numel()) // mod.out_features
                records.append({"name": name, "kind": "dense", "kh": 1, "kw": 1,
                                "dense_macs": batch * mod.in_features * mod.out_features,
                                "cin": mod.in_features})
        return fn

    for name, mod in module.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            hooks.append(mod.register_forward_hook(hook(name, mod)))
    try:
        args = example_input if isinstance(example_input, tuple) else (example_input,)
        with torch.no_grad():
            module(*args)
    finally:
        for h in hooks:
            h.remove()
    return records
