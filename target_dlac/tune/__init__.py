"""The autotuner.  Imports ``core``, ``isa``, ``binary``, ``codegen`` and ``sim``.

- ``costmodel``: a layer's cycles under a schedule, without running it;
- ``space``: the schedule space of a layer;
- ``search``: the search strategies (best-first, anneal, random, exhaustive);
- ``layer_search``: one layer's search as a worker runs it;
- ``tuning_log``: the append-only JSONL log and the codegen's schedule resolver.
"""
