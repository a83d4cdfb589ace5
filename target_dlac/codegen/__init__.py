"""Code generation: the partitioned Relax module to a :class:`Program`.  Imports
``core``, ``isa`` and ``binary``.

- ``composites``: the dLAC composites of the partition stage, read as typed layers;
- ``schedule``: :class:`ConvShape`, :class:`Schedule` (tiling, loop order), the default
  schedule and the capacity checks;
- ``layer_weights``: a layer's weights in the order and block format the PEs read;
- ``lower``: one layer to instructions under a schedule;
- ``emitter``: instruction buffers with scratchpad slots;
- ``generator``: :class:`Codegen`, the fp32 mode and the driver of every mode;
- ``refgraph``: the ``--check`` reference graph built beside the program;
- ``modes``: the other activation modes (fp16, integer).
"""
