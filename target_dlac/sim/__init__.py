"""Running a program.  Imports ``core``, ``isa`` and ``binary``.

- ``interpreter``: the vectorized NumPy ISA interpreter (outputs, cycles, zero skipping),
  with the instruction families' arithmetic in ``kernels``;
- ``timeline``: the machine's units and queues, the race check, the cycle count, and
  :class:`Replay`, the one replay of instructions the interpreter and the cost model share;
- ``report``: the run report (per layer and per instruction);
- ``host``: the HOST section's ops and the REF graph on the TVM CPU build;
- ``cpu_build``: ``tvm.compile(mod, "llvm")`` on the Relax VM (also ``compiler.reference``).
"""
