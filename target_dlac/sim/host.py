"""Host side of a program: ops dLAC does not run (``HOST``) and the ``--check`` reference.

Both sections hold a Relax graph in dlac's closed graph format
(:mod:`target_dlac.binary.hostgraph`): decompressed under a size cap, checked op by op against
the vocabulary with plain Python, rebuilt with ``relax.BlockBuilder`` and only then
built with ``tvm.compile(..., "llvm")``.  Nothing in a file names a function to call,
TVM's own serialization is never loaded, and TVM is imported only when one of the
sections is needed: a binary placed wholly on dLAC runs with NumPy alone.

Before a host op runs, its function's parameters and result are checked against the
tensor table (shapes and dtypes), so the VM never sees an argument it was not built for.
"""

from __future__ import annotations

import numpy as np

from target_dlac.core.errors import BinaryFormatError, ReferenceBuildError

from target_dlac.binary import hostgraph
from target_dlac.sim.cpu_build import CpuBuild, build_vm


def load_module(blob: bytes, section: str):
    """The section's graph as a Relax module (checked; see :mod:`target_dlac.binary.hostgraph`)."""
    return hostgraph.decode(blob, section)


class HostRunner:
    """Callable ``(index, dram)`` for the interpreter's ``HOST`` instruction."""

    def __init__(self, program):
        import tvm

        self.p = program
        mod = load_module(program.host, "HOST")
        self._check_signatures(mod)
        self.vm = build_vm(mod, "host ops")
        self._tensor = tvm.runtime.tensor

    def _check_signatures(self, mod) -> None:
        from tvm import relax

        from target_dlac.core.ir import dtype_of, shape_of

        funcs = {gv.name_hint: fn for gv, fn in mod.functions_items()}
        for i, entry in enumerate(self.p.meta.get("host_ops", [])):
            where = f"META host_ops[{i}]"
            fn = funcs.get(entry["func"])
            if fn is None:
                raise BinaryFormatError(f"{where}: function {str(entry['func'])[:40]!r} is not in the host graph",
                                        section="HOST")
            if len(fn.params) != len(entry["inputs"]):
                raise BinaryFormatError(f"{where}: {entry['func']} takes {len(fn.params)} tensors, the entry "
                                        f"gives {len(entry['inputs'])}", section="HOST")
            for p, name in zip(fn.params, entry["inputs"]):
                self._same(p.ty, shape_of(p), dtype_of(p), name, where)
            ret = fn.ty.ret if hasattr(fn.ty, "ret") else fn.body.ty
            if not isinstance(ret, relax.TensorType) or len(entry["outputs"]) != 1:
                raise BinaryFormatError(f"{where}: {entry['func']} must return one tensor", section="HOST")
            self._same(ret, shape_of(fn.body), dtype_of(fn.body), entry["outputs"][0], where)

    def _same(self, ty, shape, dtype, name, where) -> None:
        try:
            t = self.p.tensor(name)
        except KeyError:
            raise BinaryFormatError(f"{where}: tensor {str(name)[:40]!r} is not in the tensor table",
                                    section="HOST") from None
        if shape is None or tuple(shape) != tuple(t.shape) or dtype != t.dtype:
            raise BinaryFormatError(f"{where}: tensor {t.name!r} is {t.dtype}{list(t.shape)} in the tensor "
                                    f"table, {dtype}{list(shape or [])} in the host graph", section="HOST")

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


def reference_module(program):
    """The binary's REF graph as a Relax module."""
    if program.reference is None:
        raise BinaryFormatError("this binary has no REF section (compiled with --no-reference); "
                                "--check needs it", section="REF")
    g = hostgraph.parse(program.reference, "REF", consts=program.constants)   # shared weights
    if not any(f["name"] == "main" for f in g.doc["functions"]):
        raise BinaryFormatError("the reference graph has no function 'main'", section="REF")
    return hostgraph.build(g)


def reference_runner(program):
    """``inputs -> outputs`` of the binary's REF graph (the quantized Relax graph), built once
    for the TVM CPU (for several inputs)."""
    build = CpuBuild(reference_module(program), "reference graph")
    names = program.meta.get("input_names")
    return lambda inputs: build({name: inputs[name] for name in (inputs if names is None else names)})


def _rebatched(g, batch: int):
    """The checked REF graph ``g`` rewritten to take ``batch`` inputs at once: in every
    function, each parameter's leading dim 1 and each ``reshape`` target's leading 1 become
    ``batch``.  ``None`` when the graph is not written that way (a parameter without a
    leading 1, a shape operand of another op), so the batch-1 graph must be used."""
    import copy

    doc = copy.deepcopy(g.doc)
    for fn in doc["functions"]:
        if not fn["params"] or any(not p["shape"] or p["shape"][0] != 1 for p in fn["params"]):
            return None
        for p in fn["params"]:
            p["shape"][0] = batch
        for node in fn["nodes"]:
            for a in node.get("args", []):
                if isinstance(a, list) and a and a[0] == "shape":
                    if node.get("op") != "relax.reshape" or not a[1] or a[1][0] != 1:
                        return None
                    a[1][0] = batch
    return hostgraph.Graph(doc, g.data, g.section, g.consts)


def batch_reference_runner(program, batch: int):
    """``inputs -> outputs`` of the binary's REF graph built for up to ``batch`` inputs at once,
    its outer loops on TVM's thread pool (:func:`target_dlac.sim.cpu_build.parallel_outer_loops`):
    ``inputs`` name -> ``(n,) + shape`` arrays (any ``n``: run ``batch`` at a time, a short
    last batch zero-padded), outputs ``(n,) + shape``, each input's as the batch-1 graph computes it
    (``tests/sim/test_batch.py``).  A batch whose graph exceeds the closed format's work
    bound (``hostgraph.vocabulary.LIMITS.work``) is halved until it fits (the runner's
    ``batch`` says what was built).  ``None`` if the graph cannot be rebatched
    (:func:`_rebatched`); then use :func:`reference_runner` per input."""
    from tvm import relax

    from target_dlac.binary.hostgraph.vocabulary import LIMITS

    stats: dict = {}
    g1 = hostgraph.parse(program.reference, "REF", consts=program.constants) if program.reference \
        else reference_module(program)      # (the error naming the missing section)
    hostgraph.build(g1, stats=stats)        # the batch-1 graph's work: the batch that fits
    batch = min(batch, LIMITS.work // max(1, stats["work"]))
    mod = None
    while batch >= 2 and mod is None:
        g = _rebatched(g1, batch)
        if g is None:
            return None
        try:
            mod = hostgraph.build(g)
        except BinaryFormatError:       # over the work bound, or TVM refused a rebatched node
            batch //= 2
    if mod is None:
        return None
    ty = mod["main"].body.ty
    for t in (ty.fields if isinstance(ty, relax.TupleType) else [ty]):   # every output batched
        if not isinstance(t, relax.TensorType) or t.shape is None or int(t.shape.values[0]) != batch:
            return None
    build = CpuBuild(mod, "batched reference graph", parallel=True)
    names = program.meta.get("input_names") or [t.name for t in program.inputs]
    shapes = {t.name: tuple(t.shape) for t in program.inputs}

    def one(inputs: dict, lo: int, hi: int) -> list[np.ndarray]:
        args = {}
        for name in names:
            a = np.asarray(inputs[name][lo:hi]).reshape((hi - lo,) + shapes[name])[:, 0]
            if hi - lo < batch:
                a = np.concatenate([a, np.zeros((batch - (hi - lo),) + a.shape[1:], a.dtype)])
            args[name] = a
        return [o[:hi - lo, None] for o in build(args)]

    def run(inputs: dict) -> list[np.ndarray]:
        n = len(next(iter(inputs.values())))
        if n < 1:
            raise ValueError("no inputs for the batched reference")
        parts = [one(inputs, lo, min(n, lo + batch)) for lo in range(0, n, batch)]
        return [np.concatenate(outs) for outs in zip(*parts)]
    run.batch = batch
    return run


def reference_outputs(program, inputs: dict) -> list[np.ndarray]:
    """Run the binary's REF graph (the quantized Relax graph) on the TVM CPU build."""
    return reference_runner(program)(inputs)
