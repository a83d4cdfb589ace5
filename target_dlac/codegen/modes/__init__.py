"""The activation modes beyond fp32, each a :class:`Codegen` subclass.

- ``ref``: the base of the modes that also build a reference graph;
- ``fp16``: fp16 activations;
- ``integer``: 8-bit and lower dynamic fixed point, with ``intmath`` (requantization
  arithmetic shared with the interpreter's tests).
"""
