"""Error types of dlac.

Every failure a user can cause (a bad model file, an op dlac cannot place, a
shape that is not known, a bad configuration) raises a subclass of
:class:`DlacError`.  The message names *what* was wrong and *where* (file,
ONNX node, op and Relax variable, layer); the CLI prints it as one line.
"""

from __future__ import annotations


class DlacError(Exception):
    """Base class of every error dlac raises on purpose."""

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ModelLoadError(DlacError):
    """The model file cannot be read (missing, not the claimed format, malformed)."""


class NotOnnxError(ModelLoadError):
    """The file handed to the ONNX frontend is not an ONNX model."""


class ExportError(ModelLoadError):
    """``torch.export`` could not trace the module."""


_QUOTES = "'\"` "


def quoted(name) -> str:
    """``name`` in single quotes, once: quotes it already carries (``'x'``, ``"x"``) are
    dropped first, so a message never shows ``'"x"'`` or ``''x''``."""
    return f"'{str(name).strip(_QUOTES)}'"


def quoted_list(names) -> str:
    """A comma-separated list of names (``"'a', 'b'"`` or ``a, b``), each :func:`quoted` once."""
    return ", ".join(quoted(n) for n in str(names).split(",") if n.strip(_QUOTES))


def _quoted_place(where: str) -> str:
    """``lv3, after layer 'fc'`` -> ``'lv3', after layer 'fc'``: only the leading name is
    quoted (the rest already quotes its own names)."""
    head, sep, rest = str(where).partition(", ")
    return quoted(head) + sep + rest


class UnsupportedOpError(DlacError):
    """An op has neither a dLAC lowering nor a host fallback."""

    def __init__(self, op: str, node: str, detail: str = ""):
        self.op, self.node = op, node
        msg = f"op {quoted_list(op)} at node {_quoted_place(node)} has no dLAC lowering and no host fallback"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class DynamicShapeError(DlacError):
    """An input has a dimension that is not a known integer and no shape was given."""

    def __init__(self, input_name: str, shape, detail: str = ""):
        self.input_name = input_name
        bare = str(input_name).strip(_QUOTES)
        msg = (f"input {quoted(bare)} has unresolved dynamic shape {shape}; "
               f"give it with input_shapes={{{quoted(bare)}: (...)}} "
               f"(CLI: --input-shape {bare}=1x3x224x224)")
        super().__init__(msg + (f" ({detail})" if detail else ""))


class ConfigError(DlacError):
    """A configuration value (quantization, stage name, shape spec) is invalid."""


class QuantizationError(DlacError):
    """A quantization pass met a graph it cannot handle legally."""


class ReferenceBuildError(DlacError):
    """Building or running the TVM CPU reference failed."""


class DataError(DlacError):
    """A bundled data set or model file is missing or unreadable."""


class BinaryFormatError(DlacError):
    """A ``.dlac`` file (or an instruction word) is malformed: the message names the
    section and the byte offset."""

    def __init__(self, message: str, *, section: str | None = None, offset: int | None = None):
        self.section, self.offset = section, offset
        where = None
        if section is not None or offset is not None:
            parts = []
            if section is not None:
                parts.append(f"section {section}")
            if offset is not None:
                parts.append(f"byte offset {offset}")
            where = ", ".join(parts)
        super().__init__(message, where=where)


class ExecutionError(DlacError):
    """The interpreter met an instruction it cannot execute (out-of-bounds access,
    bad operand, missing dependency token): the message names the pc and instruction."""

    def __init__(self, message: str, *, pc: int | None = None, insn: str | None = None):
        self.pc, self.insn = pc, insn
        where = None if pc is None else f"pc {pc}" + (f" ({insn})" if insn else "")
        super().__init__(message, where=where)


class CodegenError(DlacError):
    """The codegen cannot lower a layer under the given schedule or machine."""


def tvm_error_line(e: BaseException, limit: int = 200) -> str:
    """The line of a TVM (or other long) error that says what went wrong: its last
    non-empty line (TVM puts the C++ backtrace first), at most ``limit`` characters."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:limit]
