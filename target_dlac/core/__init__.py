"""The base every layer may import; it imports nothing of the project.

- ``errors``: :class:`DlacError` and its kinds (each names what was wrong and where);
- ``atomic``: writing an output file whole or not at all;
- ``tomlfile``: reading a TOML file (machine files, precision files);
- ``text``: printable excerpts of untrusted strings;
- ``ir``: helpers over Relax IR (shapes, dtypes, constants, bindings), used by the
  passes and the codegen.
"""
