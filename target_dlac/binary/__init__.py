"""The ``.dlac`` binary.  Imports ``core`` and ``isa``.

- ``program``: :class:`Program` (instructions, tensor table, DRAM image, metadata);
- ``container``: the versioned, checksummed file and its reader / writer;
- ``layer_meta``: :class:`LayerMeta`, the typed record of each layer in the metadata;
- ``validate``: every check a loaded program passes before it runs;
- ``inspect``: the summary ``dlac inspect`` prints;
- ``hostgraph``: the closed graph format of the HOST and REF sections.
"""
