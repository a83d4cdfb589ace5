"""dlac compiler: frontends, the pipeline driver and the CLI.

Importing this package is cheap (no TVM, no torch); the heavy entry points
load on first use::

    from compiler import compile_model, QuantConfig, run_reference
"""

from importlib.metadata import PackageNotFoundError, version as _version

from compiler.config import QuantConfig
from target_dlac.core.errors import DlacError

try:
    __version__ = _version("dlac")
except PackageNotFoundError:     # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["compile_model", "QuantConfig", "DlacError", "run_reference", "Reference", "STAGES"]


def __getattr__(name):
    if name in ("compile_model", "STAGES", "CompileResult"):
        from compiler import pipeline
        return getattr(pipeline, name)
    if name in ("run_reference", "Reference"):
        from compiler import reference
        return getattr(reference, name)
    raise AttributeError(name)
