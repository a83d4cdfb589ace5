"""Plots of dlac results (issue 16): PNG and SVG files, written atomically.

Each ``*_plot`` function takes parsed data and an output base path ``BASE`` and writes
``BASE.png`` and ``BASE.svg``, returning their paths (:func:`compiler.plots_render.save`:
both are rendered in memory first; each file is replaced atomically, so a failure leaves
the previous files intact and never a partial one).  When the data holds nothing the plot
shows, it raises :class:`NothingToPlot` (the message says what is missing) and writes
nothing.  The figures themselves (``*_figure``, matplotlib Figures) are in
:mod:`compiler.plots_layers` and :mod:`compiler.plots_sweep`; what each shows is written
there.  matplotlib (the ``plot`` extra) is imported only when a plot is made.

=====================  =============================================  ==================
function               data                                           figure
=====================  =============================================  ==================
pareto_plot            sweep point records (``dlac sweep``)           latency vs energy,
                                                                      area as colour
layer_cycles_plot      run report ``layers`` (or a sweep point's)     stacked cycles
layer_energy_plot      run report ``layers`` with ``energy_pj``       stacked energy
roofline_plot          run report ``layers`` and its ``machine``      roofline, log-log
zero_skip_plot         run report ``layers``                          speed-up bars
tuning_plot            tuning log records (``dlac tune``)             default vs tuned
=====================  =============================================  ==================
"""

from __future__ import annotations

from compiler.plots_layers import cycles_figure, energy_figure, roofline_figure, zero_skip_figure
from compiler.plots_render import NothingToPlot, save
from compiler.plots_sweep import pareto_figure, tuning_figure

__all__ = ["NothingToPlot", "pareto_plot", "layer_cycles_plot", "layer_energy_plot", "roofline_plot",
           "zero_skip_plot", "tuning_plot"]


def pareto_plot(points: list[dict], base: str, title: str = "Design-space sweep") -> list[str]:
    return save(pareto_figure(points, title), base)


def layer_cycles_plot(layers: list[dict], base: str, title: str = "Cycles per layer") -> list[str]:
    return save(cycles_figure(layers, title), base)


def layer_energy_plot(layers: list[dict], base: str, title: str = "Energy per layer") -> list[str]:
    return save(energy_figure(layers, title), base)


def roofline_plot(layers: list[dict], machine: dict, base: str, title: str = "Roofline per layer") -> list[str]:
    return save(roofline_figure(layers, machine, title), base)


def zero_skip_plot(layers: list[dict], base: str, title: str = "Zero-skip speed-up per layer") -> list[str]:
    return save(zero_skip_figure(layers, title), base)


def tuning_plot(records: list[dict], base: str, title: str = "Tuning log") -> list[str]:
    return save(tuning_figure(records, title), base)
