"""The TVM CPU reference: build a stage's Relax module with ``tvm.compile(mod,
"llvm")`` and run it on ``relax.VirtualMachine``.

Every numeric result of dlac is checked against this build of the same graph.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import ConfigError, ReferenceBuildError, tvm_error_line

# TVM's CPU pool defaults to half the logical cores on x86 (1 on a 2-core box).
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))


def _to_numpy(out) -> list[np.ndarray]:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    result = []
    for item in out:
        result.extend(_to_numpy(item))
    return result


class Reference:
    """A compiled module, callable on NumPy inputs; returns a list of NumPy outputs."""

    def __init__(self, mod):
        import tvm
        from tvm import relax

        from passes.partition import unpartition

        mod = unpartition(mod)
        main = mod["main"]
        self.input_names = [p.name for p in main.params]
        self.input_shapes = {}
        for p in main.params:
            ty = p.ty
            self.input_shapes[p.name] = (tuple(int(s) for s in ty.shape.values), str(ty.dtype.dtype))
        try:
            self.exe = tvm.compile(mod, target="llvm")
        except Exception as e:
            raise ReferenceBuildError(f"tvm.compile failed: {type(e).__name__}: {tvm_error_line(e)}") from None
        self.vm = relax.VirtualMachine(self.exe, tvm.cpu())
        self._tensor = tvm.runtime.tensor

    def _inputs(self, inputs) -> list:
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        if isinstance(inputs, dict):
            missing = [n for n in self.input_names if n not in inputs]
            if missing:
                raise ConfigError(f"missing input(s) {missing}; the model's inputs are {self.input_names}")
            inputs = [inputs[n] for n in self.input_names]
        if len(inputs) != len(self.input_names):
            raise ConfigError(f"expected {len(self.input_names)} input(s) {self.input_names}, got {len(inputs)}")
        arrays = []
        for name, value in zip(self.input_names, inputs):
            shape, dtype = self.input_shapes[name]
            value = np.ascontiguousarray(value, dtype=dtype)
            if value.shape != shape:
                raise ConfigError(f"input '{name}' has shape {value.shape}, the model expects {shape}")
            arrays.append(self._tensor(value))
        return arrays

    def __call__(self, inputs) -> list[np.ndarray]:
        return _to_numpy(self.vm["main"](*self._inputs(inputs)))


def run_reference(mod, inputs) -> list[np.ndarray]:
    """Build ``mod`` for the CPU and run it once on ``inputs`` (array, list or dict)."""
    return Reference(mod)(inputs)
