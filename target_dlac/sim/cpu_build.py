"""The TVM CPU build: ``tvm.compile(mod, "llvm")`` run on ``relax.VirtualMachine``.

The oracle of every numeric result (``compiler.reference`` wraps it for compile-time
modules) and the engine of a binary's host ops and ``--check`` reference.  TVM is
imported only when a build is made.
"""

from __future__ import annotations

import os

import numpy as np

from target_dlac.core.errors import ConfigError, ReferenceBuildError, tvm_error_line

# TVM's CPU pool defaults to half the logical cores on x86 (1 on a 2-core box).
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))


def parallel_outer_loops(mod):
    """``mod`` with its operators lowered (``LegalizeOps``) and the outermost loop of every
    block of every loop nest marked parallel, where that is legal (a spatial loop: the batch
    for a graph built for one): TVM's thread pool (``TVM_NUM_THREADS``) then shares the
    inputs of a batch.  Each output element is computed as before, so the values do not
    change.  A block whose outer loop is a reduction stays serial."""
    from tvm import relax, s_tir
    from tvm.tirx import PrimFunc

    mod = relax.transform.LegalizeOps()(mod)
    for gv, fn in list(mod.functions_items()):
        if not isinstance(fn, PrimFunc):
            continue
        sch = s_tir.Schedule(fn)
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            loops = sch.get_loops(block)
            if loops:
                try:
                    sch.parallel(loops[0])
                except s_tir.ScheduleError:
                    pass                # not a spatial loop: left serial
        mod[gv] = sch.mod["main"]
    return mod


def build_vm(mod, what: str, parallel: bool = False):
    """``mod`` built for the CPU, as a ``relax.VirtualMachine``; a failed build is a
    one-line :class:`ReferenceBuildError` naming ``what`` was built.  ``parallel``: the outer
    loops on TVM's thread pool (:func:`parallel_outer_loops`)."""
    import tvm
    from tvm import relax

    try:
        if parallel:
            mod = parallel_outer_loops(mod)
        exe = tvm.compile(mod, target="llvm")
    except Exception as e:  # noqa: BLE001
        raise ReferenceBuildError(f"building the {what} failed: {type(e).__name__}: "
                                  f"{tvm_error_line(e)}") from None
    return relax.VirtualMachine(exe, tvm.cpu())


def _to_numpy(out) -> list[np.ndarray]:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    result = []
    for item in out:
        result.extend(_to_numpy(item))
    return result


class CpuBuild:
    """A Relax module's ``main`` built for the CPU, callable on NumPy inputs (an array,
    a list or a dict by parameter name); returns a list of NumPy outputs."""

    def __init__(self, mod, what: str = "reference", parallel: bool = False):
        import tvm

        main = mod["main"]
        self.input_names = [p.name for p in main.params]
        self.input_shapes = {}
        for p in main.params:
            ty = p.ty
            self.input_shapes[p.name] = (tuple(int(s) for s in ty.shape.values), str(ty.dtype.dtype))
        self.vm = build_vm(mod, what, parallel)
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
