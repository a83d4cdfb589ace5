"""Quantization configuration: one dataclass decides every layer's precision.

A *layer* is a weighted op (conv2d or dense).  Its name is the module path of
its weight in the source model (``conv_layers.0``, ``layer1.0.conv2``, ``fc``),
or ``<op>_<index>`` when the model gives no name.  Precision is decided, in
order of priority:

1. the first matching entry of ``overrides`` (``fnmatch`` patterns on the
   layer name, e.g. ``{"layer4.*": "fp32", "fc": "ternary"}``);
2. ``keep_first`` / ``keep_last``: the first weighted layer and the output heads (the
   last layer, and every layer whose output reaches a graph output with no other
   weighted layer in between: each head of a multi-head model) stay at full precision
   (``fp32``) by default, as in TWN/dLAC practice (papers.md 1, 4);
3. ``weights``, the default precision of every other layer.

Weight precisions: ``fp32`` (float weights), ``ternary`` (TWN), ``int4`` and ``int8``
(symmetric), each quantized layer with one scale per cluster of ``cluster_size``
filters (1 = per filter, the default; 0 = the whole layer, the same as
``granularity="layer"``); ``swis`` (shared weight bit sparsity: ``swis_shifts`` bit
positions per group of 4 weights on average, consecutive ones with
``swis_consecutive``; one scale per filter; depthwise layers fall back to int8).

ReLU thresholds (``relu_thresholds``, ``{pattern: T}``, ``fnmatch`` patterns as
``overrides``, the first matching pattern wins): the fused ReLU of each matched layer
computes ``x if x > T else 0`` instead of ``max(x, 0)`` (:func:`passes.relu_threshold`;
docs/isa.md "EPI").  T is a finite float >= 0; T == 0 is today's ReLU, the same graph
and binary as no entry.  A pattern skips the matched layers without a fused ReLU (``*``
thresholds every ReLU layer), but must match at least one layer that has one.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field, asdict

from target_dlac.core.errors import ConfigError

#: Weight precisions this version implements.  ``fp32`` keeps the float weights.
WEIGHT_PRECISIONS = ("fp32", "ternary", "int4", "int8", "swis")
#: Scale sharing of ternary weights: one scale per output filter or per layer.
GRANULARITIES = ("filter", "layer")


@dataclass(frozen=True)
class QuantConfig:
    weights: str = "ternary"
    granularity: str = "filter"
    threshold_factor: float = 0.7
    cluster_size: int = 1
    swis_shifts: float = 3.0
    swis_consecutive: bool = False
    activation_overrides: dict = field(default_factory=dict)
    keep_first: bool = True
    keep_last: bool = True
    overrides: dict = field(default_factory=dict)
    relu_thresholds: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.weights not in WEIGHT_PRECISIONS:
            raise ConfigError(f"weights={self.weights!r}; expected one of {WEIGHT_PRECISIONS}")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity={self.granularity!r}; expected one of {GRANULARITIES}")
        if isinstance(self.cluster_size, bool) or not isinstance(self.cluster_size, int) \
                or self.cluster_size < 0:
            raise ConfigError(f"cluster_size={self.cluster_size!r}; expected an integer >= 0 "
                              "(filters per shared scale, 0 = whole layer)")
        if isinstance(self.swis_shifts, bool) or not isinstance(self.swis_shifts, (int, float)) \
                or not 1.0 <= self.swis_shifts <= 8.0:
            raise ConfigError(f"swis_shifts={self.swis_shifts!r}; expected a number in [1, 8] "
                              "(average shifts per weight group, may be fractional)")
        if not 0.0 <= self.threshold_factor < 10.0:
            raise ConfigError(f"threshold_factor={self.threshold_factor} is out of range [0, 10)")
        for pattern, act in self.activation_overrides.items():
            if act not in ("fp32", "fp16"):
                raise ConfigError(f"activation override {pattern!r} -> {act!r}; expected fp32 or fp16 "
                                  "(mixed with fp16 builds; int8 is whole-graph)")
        for pattern, prec in self.overrides.items():
            if prec not in WEIGHT_PRECISIONS:
                raise ConfigError(f"override {pattern!r} -> {prec!r}; expected one of {WEIGHT_PRECISIONS}")
        if not isinstance(self.relu_thresholds, dict):
            raise ConfigError(f"relu_thresholds={self.relu_thresholds!r}; expected a table of "
                              "layer pattern -> threshold")
        for pattern, t in self.relu_thresholds.items():
            check_relu_threshold(pattern, t, "relu threshold")

    @classmethod
    def full_precision(cls) -> "QuantConfig":
        """No layer quantized (the float reference graph)."""
        return cls(weights="fp32")

    @classmethod
    def all_ternary(cls, **kw) -> "QuantConfig":
        """Every weighted layer ternary, first and last included."""
        return cls(weights="ternary", keep_first=False, keep_last=False, **kw)

    @property
    def cluster(self) -> int:
        """Filters per shared scale (0 = whole layer)."""
        return 0 if self.granularity == "layer" else self.cluster_size

    def precision_for(self, name: str, index: int, count: int, head: bool | None = None) -> tuple[str, str]:
        """Precision of layer ``name`` (position ``index`` of ``count``) and why.  ``head``:
        whether the layer is an output head (its output reaches a graph output with no other
        weighted layer in between; :func:`passes.plan_layers.output_heads`); ``keep_last``
        keeps every head, and the last layer, at full precision.  ``None``: only the last
        layer counts as a head."""
        for pattern, prec in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                return prec, f"override '{pattern}'"
        if self.keep_first and index == 0:
            return "fp32", "first layer"
        if self.keep_last and index == count - 1:
            return "fp32", "last layer"
        if self.keep_last and head:
            return "fp32", "output head"
        return self.weights, "default"

    def activations_for(self, name: str, default: str) -> str:
        """Activation type of layer ``name``: the first matching override, else ``default``."""
        for pattern, act in self.activation_overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                return act
        return default

    def relu_threshold_for(self, name: str) -> float:
        """Layer ``name``'s ReLU threshold: that of the first ``relu_thresholds`` pattern
        matching it, else 0.0 (today's ReLU)."""
        pattern = self.relu_pattern_for(name)
        return 0.0 if pattern is None else float(self.relu_thresholds[pattern])

    def relu_pattern_for(self, name: str) -> str | None:
        """The first ``relu_thresholds`` pattern matching layer ``name`` (``None``: none)."""
        return next((p for p in self.relu_thresholds if fnmatch.fnmatchcase(name, p)), None)

    def to_dict(self) -> dict:
        """The fields as a plain table; ``relu_thresholds`` only with a threshold above 0
        (so a config without one, or with zeros only, reads as before the field existed)."""
        d = asdict(self)
        nonzero = {p: float(t) for p, t in self.relu_thresholds.items() if t > 0}
        if nonzero:
            d["relu_thresholds"] = nonzero
        else:
            del d["relu_thresholds"]
        return d


def check_relu_threshold(pattern, t, what: str = "relu threshold") -> float:
    """``t`` as a float if it is a finite number >= 0 (ints allowed, not bools); else a
    :class:`ConfigError` naming ``what`` and ``pattern``."""
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{what} pattern {pattern!r}: expected a non-empty layer-name pattern")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise ConfigError(f"{what} {pattern!r} = {t!r}: expected a finite number >= 0 "
                          "(the ReLU outputs x if x > T else 0)")
    return float(t)


def precision_file(path: str) -> tuple[dict, dict, dict]:
    """``(weights, activations, relu thresholds)`` of a precision file: ``"pattern" =
    "precision"`` pairs at the top level or under ``[precision]``, activation types under
    ``[activations]``, ReLU thresholds (numbers) under ``[relu_threshold]``."""
    from target_dlac.core.tomlfile import read_toml

    data = read_toml(path, "precision file")
    acts, relu = data.get("activations", {}), data.get("relu_threshold", {})
    table = data.get("precision", {k: v for k, v in data.items() if k not in ("activations", "relu_threshold")})
    for what, t in (("precision", table), ("activations", acts)):
        bad = [k for k, v in (t.items() if isinstance(t, dict) else [("", None)]) if not isinstance(v, str)]
        if bad:
            raise ConfigError(f"precision file {path!r}: [{what}] entry {bad[0]!r} must map a layer "
                              "pattern to a string (weights: fp32, ternary, int4, int8, swis; "
                              "activations: fp32, fp16)")
    if not isinstance(relu, dict):
        raise ConfigError(f"precision file {path!r}: relu_threshold must be a table of "
                          "\"pattern\" = T entries")
    where = f"precision file {path!r}: [relu_threshold]"
    return dict(table), dict(acts), {p: check_relu_threshold(p, t, where) for p, t in relu.items()}
