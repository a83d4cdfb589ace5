"""Host side of a program: ops dLAC does not run (``HOST``) and the ``--check`` reference.

Both are TVM Relax modules stored as zlib-compressed JSON in the binary (``HOST`` and
``REF`` sections) and built with ``tvm.compile(..., "llvm")`` here.  TVM is imported
only when one of them is needed; a binary placed wholly on dLAC runs with NumPy alone.
Loading the JSON deserializes IR; nothing in the file is executed as Python.
"""

from __future__ import annotations

import zlib

import numpy as np

from compiler.errors import BinaryFormatError, ReferenceBuildError


def load_module(blob: bytes, section: str):
    import tvm

    try:
        return tvm.ir.load_json(zlib.decompress(blob).decode("utf-8"))
    except Exception as e:  # noqa: BLE001 - any decode/parse failure is a format error
        raise BinaryFormatError(f"cannot load the Relax module: {type(e).__name__}: {str(e)[:200]}",
                                section=section) from None


class HostRunner:
    """Callable ``(index, dram)`` for the interpreter's ``HOST`` instruction."""

    def __init__(self, program):
        import tvm
        from tvm import relax

        self.p = program
        mod = load_module(program.host, "HOST")
        try:
            exe = tvm.compile(mod, target="llvm")
        except Exception as e:  # noqa: BLE001
            raise ReferenceBuildError(f"building the host ops failed: {type(e).__name__}: {str(e)[:200]}") from None
        self.vm = relax.VirtualMachine(exe, tvm.cpu())
        self._tensor = tvm.runtime.tensor

    def __call__(self, index: int, dram: np.ndarray) -> None:
        entry = self.p.meta["host_ops"][index]
        args = []
        for name in entry["inputs"]:
            t = self.p.tensor(name)
            raw = dram[t.addr:t.addr + t.nbytes].view(np.dtype(t.dtype)).reshape(t.shape)
            args.append(self._tensor(np.array(raw, order="C")))      # keeps 0-d (scalar) shapes
        out = self.vm[entry["func"]](*args)
        t = self.p.tensor(entry["outputs"][0])
        val = np.ascontiguousarray(out.numpy(), dtype=t.dtype)
        if val.nbytes != t.nbytes:
            raise ReferenceBuildError(f"host op {entry['func']} returned {val.shape}, expected {t.shape}")
        dram[t.addr:t.addr + t.nbytes] = val.view(np.uint8).reshape(-1)


def reference_outputs(program, inputs: dict) -> list[np.ndarray]:
    """Run the binary's REF graph (the quantized Relax graph) on the TVM CPU build."""
    from compiler.reference import run_reference

    if program.reference is None:
        raise BinaryFormatError("this binary has no REF section (compiled with --no-reference); "
                                "--check needs it", section="REF")
    mod = load_module(program.reference, "REF")
    return run_reference(mod, {name: inputs[name] for name in program.meta.get("input_names", inputs)})
