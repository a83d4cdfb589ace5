"""Activation statistics for the cost model and the tuner: how much of a layer's compute
survives zero-activation skipping, measured on sample inputs.

:func:`live_ratios` runs a program on sample inputs in the interpreter with its probe on
(:class:`target_dlac.sim.interpreter.Interpreter`, ``probe=True``): for every conv
instruction and every PE mapping (``pxshift``) the machine allows, the compute steps left
with the machine's ``act_skip`` over the steps with dense activations.  Summed per layer,
these are the ``live_ratio`` of :func:`target_dlac.tune.costmodel.layer_cycles`: the
expected cycles of a schedule are its dense-activation conv cycles scaled by the ratio of
its PE mapping.  The ratio is measured under the program's own tiling; another tiling of
the same layer groups the pixels of a pass differently only at tile edges.
"""

from __future__ import annotations

from target_dlac.binary.layer_meta import layer_table
from target_dlac.core.errors import ConfigError


def live_ratios(program, samples, host_runner=None, progress=None) -> dict:
    """``{layer name: {pxshift: ratio}}`` over ``samples`` (a list of input dicts, name ->
    array) for the conv / dense layers of ``program``; empty when ``act_skip`` is ``none``.
    ``host_runner``: the program's host ops (default: built with TVM when it has some)."""
    from target_dlac.sim.interpreter import Interpreter

    if program.machine.act_skip == "none":
        return {}
    if not samples:
        raise ConfigError("activation statistics need at least one sample input")
    if host_runner is None and program.host is not None:
        from target_dlac.sim.host import HostRunner
        host_runner = HostRunner(program)
    it = Interpreter(program, check_races=False, probe=True)
    for i, inputs in enumerate(samples):
        it.run(inputs, host_runner)
        if progress:
            progress(i + 1, len(samples))
    out = {}
    for meta in layer_table(program.meta):
        sums: dict = {}
        for pc in range(meta.pc_start, meta.pc_end):
            for px, (live, dense) in it.probe.get(pc, {}).items():
                a, b = sums.get(px, (0, 0))
                sums[px] = (a + live, b + dense)
        if sums:
            out[meta.name] = {px: (a / b if b else 1.0) for px, (a, b) in sorted(sums.items())}
    return out
