"""The base every layer may import; it imports nothing of the project.

- ``errors``: :class:`DlacError` and its kinds (each names what was wrong and where);
- ``atomic``: writing an output file whole or not at all;
- ``tomlfile``: reading a TOML file (machine files, precision files);
- ``text``: printable excerpts of untrusted strings;
- ``ir``: helpers over Relax IR (shapes, dtypes, constants, bindings, mutators that keep
  dlac's errors), used by the passes and the codegen;
- ``plan``: the per-layer plan the quantize stage makes (:class:`LayerPlan`: precision,
  :class:`WeightFormat`, the integer or SWIS decomposition, activation type), read by
  the codegen, the integer mode and the tuner.
"""
