"""The dLAC target: ISA, binary format, codegen, interpreter and machine model.

Placeholder: arrives with the dLAC target issue.  The input it will consume is
the partitioned module of :func:`compiler.compile_model` (regions with
``Codegen = "dlac"``, composites tagged with ``dlac.layer``).
"""
