"""What :func:`compiler.pipeline.compile_model` returns: :class:`CompileResult`, the
stages' modules with the layer plan, the multiplies report and the host ops, and its
reports (the layer table, the multiply counts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from target_dlac.core.errors import ConfigError
from target_dlac.core.plan import LayerPlan
from target_dlac.core.text import printable

from compiler.config import QuantConfig

#: the old name of a layer plan (``CompileResult.layers``)
LayerInfo = LayerPlan


@dataclass
class CompileResult:
    stages: dict                      # stage name -> IRModule, in order
    layers: list[LayerPlan]           # the layer plan, one per conv / dense layer, in order
    multiplies: list                  # passes.accumulate.LayerMultiplies
    host_ops: list                    # passes.partition.HostOp
    regions: list
    input_names: list[str]
    input_shapes: dict
    config: QuantConfig
    source: str
    source_hash: str
    timings: dict = field(default_factory=dict)
    machine: object = None            # the Machine the front half planned for

    @property
    def mod(self):
        """The last stage's module."""
        return self.stages[next(reversed(self.stages))]

    @property
    def plan(self) -> dict[str, LayerPlan]:
        """The layer plan by layer variable."""
        return {p.var: p for p in self.layers}

    @property
    def swis(self) -> dict:
        """The SWIS decompositions by layer variable (``passes.swis.SwisResult``; from the plan)."""
        return {p.var: p.swis for p in self.layers if p.swis is not None}

    def reference_module(self, stage: str | None = None):
        """The module of ``stage`` (default: the last one run), for :func:`run_reference`
        (which builds partitioned modules through ``unpartition``)."""
        stage = stage or next(reversed(self.stages))
        if stage not in self.stages:
            raise ConfigError(f"stage {stage!r} was not run; have {list(self.stages)}")
        return self.stages[stage]

    def codegen_args(self, schedules=None, progress=None, plan: dict | None = None) -> dict:
        """What the codegen takes from this result (``target_dlac.codegen.generator.Codegen``'s
        keyword arguments): the layer plan by layer variable (``plan`` replaces it, e.g.
        with the int8 forms of an int8 build), plus the given ``schedules`` and ``progress``."""
        return dict(plan=plan if plan is not None else self.plan, schedules=schedules,
                    progress=progress)

    def totals(self) -> dict:
        dense = sum(r.dense_macs for r in self.multiplies)
        replaced = sum(r.replaced for r in self.multiplies)
        return {"dense_macs": dense, "replaced": replaced,
                "left": sum(r.left for r in self.multiplies),
                "replaced_share": replaced / dense if dense else 0.0}

    def cluster_counts(self, n: int | None = None) -> dict:
        """Multiplies replaced with the counting of papers.md section 2 (one real multiply
        per cluster of ``n`` k x k kernel slices of an output channel; default: the
        config's cluster size, whole layer for 0), over the layers quantized ternary."""
        from passes.mult_count import count_layers, totals

        n = n if n is not None else (self.config.cluster or None)
        by_var = {r.name: r for r in self.multiplies}
        rows = []
        for info in self.layers:
            w = info.weight_shape
            kh, kw, cin = (w[2], w[3], w[1]) if info.op == "conv2d" else (1, 1, w[0])
            rows.append({"name": info.name, "kind": "conv" if info.op == "conv2d" else "dense",
                         "kh": kh, "kw": kw, "cin": cin, "dense_macs": by_var[info.var].dense_macs})
        keep = [i.name for i in self.layers if i.precision != "ternary"]
        return totals(count_layers(rows, n, full_precision=keep)) | {"n": n}

    def layer_table(self) -> str:
        lines = [f"{'layer':<28} {'op':<7} {'precision':<9} {'why':<14} {'dense MACs':>12} "
                 f"{'replaced':>12} {'left':>10}"]
        by_var = {r.name: r for r in self.multiplies}
        for info in self.layers:
            r = by_var.get(info.var)
            lines.append(f"{printable(info.name):<28} {info.op:<7} {info.precision:<9} {info.reason:<14} "
                         f"{r.dense_macs if r else 0:>12,} {r.replaced if r else 0:>12,} "
                         f"{r.left if r else 0:>10,}")
        t = self.totals()
        lines.append(f"{'total':<28} {'':<7} {'':<9} {'':<14} {t['dense_macs']:>12,} "
                     f"{t['replaced']:>12,} {t['left']:>10,}   "
                     f"({100 * t['replaced_share']:.1f}% of multiplies replaced)")
        if any(i.precision == "ternary" for i in self.layers):
            c = self.cluster_counts()
            lines.append(f"papers.md section 2 counting (one multiply per cluster of "
                         f"{c['n'] or 'all'} kernel slices): {100 * c['replaced_share']:.1f}% replaced")
        return "\n".join(lines)
