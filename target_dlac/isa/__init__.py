"""The ISA: what the machine is and what it executes.  Imports ``core`` only.

- ``machine``: :class:`Machine`, the one configuration every width and size derives from;
- ``encoding``: instructions, their fields and binary encoding (``FORMATS``), disassembly;
- ``formats``: the facts of each weight format (its compute instruction, ``wfmt``, bytes
  per weight, largest magnitude, SWIS group);
- ``cycles``: the cycle cost of each instruction (the machine model of docs/isa.md);
- ``blocks``: weight block formats (ternary bitplanes, SWIS groups) and their sizes;
- ``limits``: bounds on work and memory per program, instruction and run;
- ``field_max(op, field)`` (in ``encoding``): every encoding limit, derived from ``FORMATS``.
"""
