"""MultiplyToAccumulate: hold quantized weights as int8, so a ternary layer is an
accumulation; plus the check and the multiplies report.

Rewrites ``conv2d(x, q)`` / ``matmul(x, q)`` of each quantized layer, where ``q`` is a
float constant of integers (after FoldScales), into the same op on an integer constant
of the dtype its weight format holds (:data:`target_dlac.isa.formats.FACTS`: **int8**
for ternary and 4-/8-bit layers, int16 for SWIS) with ``out_dtype`` float32.  For a ternary layer every product
``x * t`` is ``+x``, ``-x`` or skipped, i.e. an add, a subtract or nothing, and the
only multiply left is the per-channel epilogue scale, one per output element; 4-bit
and 8-bit layers keep small-integer multiplies.

Legal when the weight values are integers within the format's largest magnitude
([-127, 127]; SWIS [-255, 255]), and in {-1, 0, +1} for ternary layers (checked;
anything else raises ``QuantizationError``).
``check_accumulate_only`` verifies the result independently: no ternary layer
multiplies by a non-sign weight.
"""

from __future__ import annotations

from dataclasses import dataclass, asdict

import numpy as np

from target_dlac.core.errors import QuantizationError

from target_dlac.core.ir import dtype_of, make_const, module_pass, relax_functions, shape_of
from target_dlac.core.plan import WeightFormat, format_of
from target_dlac.isa.formats import facts
from passes.layers import find_layers, replace_weights


@dataclass
class LayerMultiplies:
    name: str
    op: str
    precision: str
    dense_macs: int          # weight multiplies of the float layer
    replaced: int            # of those, turned into add/sub (non-zero t) or skipped (zero t)
    accumulations: int       # non-zero weights x output positions: adds/subtracts issued
    left: int                # multiplies still executed (dense MACs, or one scale per output)

    def to_dict(self) -> dict:
        return asdict(self)


def _is_sign(w: np.ndarray) -> bool:
    return bool(np.all(np.isin(w, (-1, 0, 1))))


def multiply_to_accumulate(mod, quantized=frozenset()):
    """``quantized``: layer names (ternary), or ``{name: WeightFormat}`` (the layer plans'),
    or ``{name: precision}`` (its format by :func:`target_dlac.core.plan.format_of`);
    ternary layers are checked to hold signs only."""
    given = quantized if isinstance(quantized, dict) else dict.fromkeys(quantized, WeightFormat.TERNARY)
    formats = {k: v if isinstance(v, WeightFormat) else format_of(v) for k, v in given.items()}

    def to_int(layer):
        w = layer.weight
        fmt = facts(formats[layer.name])
        if not fmt.integer:
            raise QuantizationError(f"weight format {fmt.fmt} holds no integers", where=f"layer {layer.name}")
        ok = _is_sign(w) if fmt.fmt is WeightFormat.TERNARY else \
            bool(np.all((w == np.rint(w)) & (np.abs(w) <= fmt.max_magnitude)))
        if not ok:
            raise QuantizationError(f"weights are not {given[layer.name]} integers; run QuantizeWeights and "
                                    "FoldScales first", where=f"layer {layer.name}")
        return make_const(w.astype(fmt.dtype), fmt.dtype), dtype_of(layer.call)

    return replace_weights(mod, set(formats), to_int)


def MultiplyToAccumulate(quantized=frozenset()):  # noqa: N802 - TVM pass naming
    """MultiplyToAccumulate as a TVM module pass."""
    return module_pass("dlac.MultiplyToAccumulate")(lambda mod: multiply_to_accumulate(mod, quantized))


def check_accumulate_only(mod, ternary) -> None:
    """Raise unless every ternary layer multiplies only by int8 signs."""
    found = set()
    for _, func in relax_functions(mod):
        for layer in find_layers(func):
            if layer.name not in ternary:
                continue
            found.add(layer.name)
            if dtype_of(layer.call.args[1]) != "int8" or not _is_sign(layer.weight):
                raise QuantizationError("a multiplication by a weight remains (weight is "
                                        f"{dtype_of(layer.call.args[1])}, not int8 signs)",
                                        where=f"layer {layer.name}")
    missing = set(ternary) - found
    if missing:
        raise QuantizationError(f"ternary layers not found in the graph: {sorted(missing)}")


def multiplies_report(mod, precisions: dict[str, str]) -> list[LayerMultiplies]:
    """Per-layer multiplies replaced / left; ``precisions`` maps layer name -> precision."""
    rows = []
    for _, func in relax_functions(mod):
        for layer in find_layers(func):
            prec = precisions.get(layer.name, "fp32")
            dense = layer.dense_macs()
            if prec == "ternary":
                w = layer.weight
                issued = dense // w.size * int(np.count_nonzero(w))   # non-zeros x output positions
                out_elems = int(np.prod(shape_of(layer.call)))
                rows.append(LayerMultiplies(layer.name, layer.op, prec, dense, dense, issued, out_elems))
            else:
                rows.append(LayerMultiplies(layer.name, layer.op, prec, dense, 0, 0, dense))
    return rows
