"""The dLAC target, in layers; each sub-package imports only the ones above it here
(checked by ``tests/arch/test_layering.py``):

- :mod:`target_dlac.core`: errors, atomic file writes, TOML reading, printable text,
  Relax IR helpers, the layer plan types.  Imports nothing of the project.
- :mod:`target_dlac.isa`: the machine and what it executes: machine description,
  instruction encoding, cycle costs, weight block formats, bounds.  Imports ``core``.
- :mod:`target_dlac.binary`: the ``.dlac`` file: program, container, validation,
  summary, and the closed graph format of its HOST / REF sections.  ``core``, ``isa``.
- :mod:`target_dlac.codegen`: the partitioned Relax module to a program: composites,
  schedules, layer weights, lowering, the emitter, the activation modes.
  ``core``, ``isa``, ``binary``.
- :mod:`target_dlac.sim`: running a program: the ISA interpreter, timeline, run report,
  host ops on the TVM CPU build.  ``core``, ``isa``, ``binary``.
- :mod:`target_dlac.tune`: the autotuner: cost model, schedule space, search, tuning log.
  ``core``, ``isa``, ``binary``, ``codegen``, ``sim``.

``passes`` (the Relax passes) may import ``core`` and ``isa``; ``compiler`` may import
everything; nothing here imports ``passes`` or ``compiler``.

The names a user needs are re-exported here (loaded on first use)::

    from target_dlac import Machine, run, read_program, write_program
"""

_EXPORTS = {
    "Machine": "target_dlac.isa.machine",
    "Program": "target_dlac.binary.program",
    "read_program": "target_dlac.binary.container",
    "write_program": "target_dlac.binary.container",
    "run": "target_dlac.sim.interpreter",
    "Interpreter": "target_dlac.sim.interpreter",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'target_dlac' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod), name)
