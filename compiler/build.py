"""From a :class:`CompileResult` to a dLAC program / ``.dlac`` file.

``build_program`` runs the codegen on the partition stage, then records in the
metadata what a user needs to trust and reproduce the binary: compiler version,
source model hash, quantization config, input names, per-layer schedules; and it
embeds the quantized graph (``REF`` section) so ``dlac run --check`` can build the
TVM CPU reference of exactly the graph that was compiled.
"""

from __future__ import annotations

import zlib

from . import __version__
from .errors import ConfigError


def build_program(result, machine=None, *, schedules: dict | None = None, reference: bool = True,
                  progress=None):
    import tvm

    from target_dlac.codegen import generate
    from target_dlac.machine import Machine

    if "partition" not in result.stages:
        raise ConfigError("build_program needs a result compiled through the partition stage")
    machine = machine or Machine()
    prog = generate(result.stages["partition"], machine,
                    layer_names={i.var: i.name for i in result.layers},
                    precisions={i.var: i.precision for i in result.layers},
                    schedules=schedules, progress=progress)
    prog.meta.update({
        "compiler": f"dlac {__version__}",
        "source": result.source, "source_hash": result.source_hash,
        "quant_config": result.config.to_dict(),
        "input_names": list(result.input_names),
        "machine_hash": machine.hash(),
    })
    if reference:
        prog.reference = zlib.compress(tvm.ir.save_json(result.stages["fold"]).encode(), 1)
    return prog
