"""Codegen: a partitioned Relax module -> a dLAC :class:`Program`.

Walks ``main`` in binding order.  Every tensor gets a DRAM address (inputs first,
then each result as it is produced; reshapes are address views).  Each composite
of a ``dlac_region_*`` function is lowered under its schedule:

* conv2d / dense layers: weights packed per (filter tile, input-channel tile) into
  constants (ternary: non-zero index lists with 2-bit codes, filters in PE order;
  fp32: dense blocks), epilogue parameters per filter tile, then ``lower_conv``;
* pooling, element-wise ops: ``lower_pool`` / ``lower_eltwise``.

Ops left on the host by the partitioner, and composites the lowering cannot take
(reason recorded), become ``HOST`` instructions: their Relax functions go into the
binary's host section (in the closed graph format of :mod:`target_dlac.binary.hostgraph`; an
op outside its vocabulary cannot be a host op) and run through TVM's CPU build in the
runner.

Entry point: :func:`generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from target_dlac.core.errors import CodegenError
from target_dlac.core.ir import const_np, dtype_of, is_const, iter_bindings, op_name, shape_of

from target_dlac.core.plan import LayerPlan, WeightFormat
from target_dlac.codegen import composites as C
from target_dlac.codegen import hostops
from target_dlac.codegen.composites import ConvLayer
from target_dlac.binary import hostgraph
from target_dlac.isa.encoding import MAX_POOL_KERNEL, MAX_POOL_STRIDE, Insn
from target_dlac.isa.formats import SWIS_GROUP, facts
from target_dlac.codegen.layer_weights import pe_order
from target_dlac.codegen.lower import Elt, Epilogue, PoolShape, lower_conv, lower_eltwise, lower_pool, threshold_meta
from target_dlac.codegen.concat import lower_concat
from target_dlac.codegen.matmul import lower_matmul
from target_dlac.isa.machine import Machine
from target_dlac.isa.blocks import pack_swis, pack_ternary
from target_dlac.binary.layer_meta import LayerMeta
from target_dlac.binary.program import DTYPE_SIZES, Program, Tensor
from target_dlac.codegen.schedule import align, check, default_schedule, weight_tiles

#: Activations are allocated from this virtual DRAM address, then placed after the constants.
ACT_BASE = 1 << 39
#: precision label of a pooling / element-wise op by its activation type
LABELS = {"float32": "fp32", "float16": "fp16", "int8": "int8"}


@dataclass
class Ref:
    """A tensor in DRAM (``shape`` is the Relax shape; the bytes are NCHW / row-major).
    int8 tensors carry their dynamic fixed-point exponent ``exp``."""
    name: str
    addr: int
    shape: tuple
    dtype: str = "float32"
    exp: int | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPE_SIZES[self.dtype]


class Codegen:
    def __init__(self, mod: tvm.IRModule, machine: Machine, *, plan: dict | None = None,
                 layer_names: dict | None = None, schedules=None, progress=None):
        """``plan``: ``{layer var: LayerPlan}`` (the quantize stage's; a layer without one
        is full precision, or what its composite's attributes say).  ``layer_names``:
        display names by layer var (default: the plan's).  ``schedules``: ``{layer name:
        Schedule}``, or a function ``(ConvLayer) -> Schedule or None``; a layer without
        one gets :func:`schedule.default_schedule`."""
        self.mod, self.m = mod, machine
        self.plan: dict[str, LayerPlan] = dict(plan or {})
        self.layer_names = layer_names if layer_names is not None else \
            {v: p.name for v, p in self.plan.items()}
        self.schedules = schedules or {}
        self.conv_layers: list[ConvLayer] = []
        self.progress, self.weight_blocks = progress, []     # weight_blocks: (w, format, tiles) per layer
        self.consts = bytearray()
        self.tensors: list[Tensor] = []
        self.names: set = set()
        self.insns: list[Insn] = []
        self.layers: list[LayerMeta] = []
        self.host_funcs: dict = {}
        self.host_ops: list[dict] = []
        self.fallbacks: list[dict] = []
        self.env: dict = {}
        # which Relax variable produced which tensor (calibration, exponents); by tensor name:
        # the program's tensor table holds the final addresses
        self.produced: dict = {}        # Relax var -> tensor name
        self.producer: dict = {}        # tensor name -> Relax var
        self._act_end = 0

    @property
    def precisions(self) -> dict:
        """Precision by layer var (from the plan; the old ``precisions`` argument)."""
        return {v: p.precision for v, p in self.plan.items()}

    @property
    def swis(self) -> dict:
        """SWIS decompositions by layer var (from the plan; the old ``swis`` argument)."""
        return {v: p.swis for v, p in self.plan.items() if p.swis is not None}

    # ---- DRAM -------------------------------------------------------------------------
    def _const_bytes(self, data: bytes) -> int:
        addr = align(len(self.consts))
        self.consts.extend(b"\0" * (addr - len(self.consts)))
        self.consts.extend(data)
        return addr

    def _unique(self, name: str) -> str:
        base, i = name, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def _alloc(self, name: str, shape: tuple, dtype: str = "float32", role: str = "activation",
               exp: int | None = None) -> Ref:
        """DRAM for a tensor.  Activations are placed in a virtual range from ``ACT_BASE``
        and moved behind the constants when the program is finished."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[dtype]
        ref = Ref(self._unique(name), ACT_BASE + self._act_end, tuple(shape), dtype, exp)
        self._act_end = align(self._act_end + nbytes)
        if self._act_end > self.m.dram_bytes:
            raise CodegenError(f"tensor {name} {shape}: the program needs more than the machine's "
                               f"{self.m.dram_mib} MiB of DRAM")
        self.tensors.append(Tensor(ref.name, role, ref.shape, dtype, ref.addr))
        return ref

    def ref(self, expr) -> Ref:
        if isinstance(expr, relax.Var):
            got = self.env.get(expr)
            if got is None:
                raise CodegenError(f"variable {expr.name} is used before it is computed")
            if isinstance(got, hostops.Pending):
                raise CodegenError(f"host {hostops.where(got.op, got.name, self.layers)}: its "
                                   f"{dtype_of(expr)} result feeds dLAC or an output, which hold "
                                   f"{', '.join(DTYPE_SIZES)} only")
            return got
        if is_const(expr):
            value = const_np(expr)
            if value.dtype != np.float32:
                raise CodegenError(f"constant operand of dtype {value.dtype}: only float32 is supported")
            addr = self._const_bytes(np.ascontiguousarray(value, "<f4").tobytes())
            ref = Ref(self._unique("const"), addr, tuple(value.shape))
            self.tensors.append(Tensor(ref.name, "constant", ref.shape, "float32", addr))
            return ref
        raise CodegenError(f"operand {type(expr).__name__} is not a tensor")

    # ---- walk -------------------------------------------------------------------------
    def generate(self) -> Program:
        main = self.mod["main"]
        self._act_end = 0
        for p in main.params:
            if shape_of(p) is None or dtype_of(p) != "float32":
                raise CodegenError(f"input {p.name}: only static float32 inputs are supported")
            r = self._alloc(p.name, shape_of(p), role="input")
            self.env[p] = r
            self._record(p, r)
        self._begin(main)
        for b in iter_bindings(main):
            self.env[b.var] = self._binding(b.var, b.value)
        outs = self._outputs(self._result(main.body.body))
        self.insns.append(Insn("HALT"))
        return self._finish(outs)

    # hooks of the float32 program (the int8 codegen overrides them)
    def _begin(self, main):
        pass

    def _outputs(self, outs):
        return outs

    def _view(self, src: Ref, shape: tuple, var) -> Ref:
        """A reshape: the same bytes under a new name and shape (in the tensor table, so a
        host op reading it gets its shape)."""
        ref = Ref(self._unique(var.name), src.addr, tuple(shape), src.dtype, src.exp)
        self.tensors.append(Tensor(ref.name, "activation", ref.shape, ref.dtype, ref.addr))
        return ref

    def _out(self, var, spec, env) -> Ref:
        return self._alloc(var.name, spec.out_shape)

    def _record(self, var, ref: Ref) -> Ref:
        """Remember which Relax variable produced ``ref`` (calibration, exponents)."""
        if isinstance(ref, Ref):          # not a tuple or a pending host value
            self.produced[var] = ref.name
            self.producer[ref.name] = var
        return ref

    def _binding(self, var, value):
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.GlobalVar):
            func = self.mod[value.op]
            if func.attrs is None or "Codegen" not in func.attrs:
                raise CodegenError(f"{var.name}: call to non-dLAC function {value.op.name_hint}")
            return self._region(func, [self.ref(a) for a in value.args], value.op.name_hint)
        if op_name(value) is not None:
            return self._record(var, self._host_call(var, value))
        if isinstance(value, relax.Tuple):
            return tuple(self._result(f) for f in value.fields)
        if isinstance(value, relax.TupleGetItem):
            return self.env[value.tuple_value][value.index]
        if isinstance(value, relax.Var):
            return self.env[value]
        raise CodegenError(f"{var.name}: cannot place a {type(value).__name__} binding")

    def _result(self, expr):
        if isinstance(expr, relax.Tuple):
            return tuple(self._result(f) for f in expr.fields)
        return self.ref(expr)

    def _region(self, func, args, name):
        local = dict(zip(func.params, args))
        comps = {}
        for b in iter_bindings(func):
            v = b.value
            if isinstance(v, relax.Function):
                comps[b.var] = v
            elif isinstance(v, relax.Call) and isinstance(v.op, relax.Var) and v.op in comps:
                fn = comps[v.op]
                ins = [local[a] if isinstance(a, relax.Var) and a in local else self.ref(a) for a in v.args]
                local[b.var] = self._composite(fn, ins, b.var)
            elif isinstance(v, relax.Tuple):
                local[b.var] = tuple(local[f] for f in v.fields)
            elif isinstance(v, relax.TupleGetItem):
                local[b.var] = local[v.tuple_value][v.index]
            elif isinstance(v, relax.Var):
                local[b.var] = local[v]
            else:
                raise CodegenError(f"region {name}: unexpected binding {b.var.name}")
        out = func.body.body
        if isinstance(out, relax.Tuple):
            return tuple(local[f] for f in out.fields)
        return local[out]

    def _composite(self, fn, args, var):
        kind = str(fn.attrs["Composite"])
        env = dict(zip(fn.params, args))
        try:
            spec = C.parse(fn, self.plan)
            if isinstance(spec, C.ViewSpec):
                return self._view(env[spec.data], spec.out_shape, var)
            start = len(self.insns)
            out = self._out(var, spec, env)
            if isinstance(spec, C.ConvSpec):
                entry = self._conv(spec, env, out)
            elif isinstance(spec, C.PoolSpec):
                entry = self._pool(spec, env, out)
            elif isinstance(spec, C.MatmulSpec):      # activation x activation (codegen/matmul.py)
                entry = lower_matmul(self, spec, env, out)
            elif isinstance(spec, C.ConcatSpec):      # channel concat: copies (codegen/concat.py)
                entry = lower_concat(self, spec, env, out)
            else:
                entry = self._elt(spec, env, out)
        except C.Unlowerable as e:
            self.fallbacks.append({"composite": kind, "var": var.name, "reason": str(e)})
            f = C.strip_attrs(fn)
            return self._record(var, self._host(var.name, f, args, shape_of(var)))
        self.layers.append(LayerMeta(**entry, pc_start=start, pc_end=len(self.insns)))
        self._record(var, out)
        if self.progress and isinstance(spec, C.ConvSpec):     # per conv / dense layer (compiler/build.py)
            self.progress(entry)
        return out

    # ---- lowering ---------------------------------------------------------------------
    def _layer_weights(self, spec: C.ConvSpec, x: Ref, out: Ref, res: Ref | None):
        """(weights, per-filter parameter vectors, Epilogue) of a layer in this mode."""
        prm = spec.epi_params       # per-channel vectors of the EPI parameter block (docs/isa.md "EPI")
        epi = Epilogue(spec.scale is not None, spec.act, spec.lo, spec.hi,
                       None if res is None else res.addr)
        return spec.weight, prm, epi

    def _param_block(self, prm: list, f0: int, f1: int) -> bytes:
        return np.concatenate([v[f0:f1] for v in prm]).astype("<f4").tobytes()

    def _weight_format(self, spec: C.ConvSpec) -> WeightFormat:
        """The format this mode lowers the layer's weights in (the plan's)."""
        return spec.weight_format

    def _conv(self, spec: C.ConvSpec, env, out: Ref) -> dict:
        x = env[spec.data]
        res = env[spec.residual] if spec.residual is not None else None
        w, prm, epi = self._layer_weights(spec, x, out, res)
        fmt = self._weight_format(spec)
        if fmt is WeightFormat.SWIS and spec.plan.swis is None:
            raise CodegenError(f"layer {spec.layer}: SWIS weights without their decomposition")
        display = self.layer_names.get(spec.layer, spec.layer)
        layer = C.conv_layer(spec, x.shape, x.dtype, w, fmt, epi.has_scale, display, epi.act)
        shape, sw = layer.shape, layer.weights.swis
        self.conv_layers.append(layer)
        sched = self._schedule_for(layer, spec.layer)
        wblock, pblock = {}, {}
        wbytes = 0
        for fi, ci, (f0, f1), (c0, c1) in weight_tiles(shape, sched):
            tile = w[f0:f1, c0:c1]
            if fmt is WeightFormat.SWIS:
                data = self._swis_block(sw, tile, f0, f1, c0, c1, sched.pe_order)
            elif fmt is WeightFormat.TERNARY:
                data = pack_ternary(tile, pe_order(tile, sched.pe_order))
            else:
                data = np.ascontiguousarray(tile).tobytes()      # float32 or int8, dense
            wblock[(fi, ci)] = (self._const_bytes(data), len(data))
            wbytes += len(data)
            if ci == 0:
                data = self._param_block(prm, f0, f1)
                pblock[fi] = (self._const_bytes(data), len(data))
                wbytes += len(data)
        self.weight_blocks.append((w, str(fmt), [(*f, *c, *wblock[i, j]) for i, j, f, c in weight_tiles(shape, sched)]))
        self.insns += lower_conv(shape, sched, self.m, x_addr=x.addr, out_addr=out.addr, wblock=wblock,
                                 pblock=pblock, epi=epi, name=display, wfmt=facts(fmt).wfmt)
        return {"name": display, "var": spec.layer, "op": layer.op, "precision": layer.precision,
                "schedule": sched.to_dict(), "shape": {k: v for k, v in vars(shape).items()},
                "min_dram_bytes": shape.min_input_bytes() + wbytes + out.nbytes + (res.nbytes if res else 0),
                "min_write_bytes": out.nbytes, **threshold_meta(spec.act, spec.lo)}

    def _schedule_for(self, layer: ConvLayer, var: str):
        """The layer's schedule: given (checked against the buffers), else the default."""
        s = self.schedules
        sched = s(layer) if callable(s) else (s.get(layer.name) or s.get(var))
        where = f"layer {layer.name}"
        if sched is None:
            return default_schedule(layer.shape, self.m, layer.weights.max_bytes, where=where)
        check(layer.shape, sched, self.m, layer.weights.max_bytes, where=where)
        return sched

    @staticmethod
    def _swis_block(sw, tile: np.ndarray, f0: int, f1: int, c0: int, c1: int, how: str) -> bytes:
        """A SWIS tile: the layer's shift sets of groups c0/M .. ceil(c1/M) (M = SWIS_GROUP);
        filters in PE order by shift count (as_is: as given)."""
        kk = tile.shape[2] * tile.shape[3]
        g_all = sw.shifts.shape[1] // kk                 # groups per kernel position
        shifts = sw.shifts.reshape(sw.shifts.shape[0], kk, g_all, -1)[f0:f1, :, c0 // SWIS_GROUP:
                                                                      -(-c1 // SWIS_GROUP)]
        counts = sw.counts[f0:f1]
        order = (np.arange(f1 - f0) if how == "as_is" else np.argsort(-counts, kind="stable"))
        return pack_swis(tile.astype(np.int64), shifts, counts, order)

    def _pool_requant(self, spec: C.PoolSpec, x: Ref, out: Ref) -> tuple[int, int]:
        """(multiplier, shift) of an int8 average pool; float modes have none."""
        return 0, 0

    def _pool(self, spec: C.PoolSpec, env, out: Ref) -> dict:
        x = env[spec.data]
        n, c, h, w = x.shape
        oh, ow = (spec.out_shape[2], spec.out_shape[3]) if len(spec.out_shape) == 4 else (1, 1)
        if max(spec.kernel) > MAX_POOL_KERNEL or max(spec.strides) > MAX_POOL_STRIDE:
            raise C.Unlowerable("pool window or stride exceeds the encoding's fields")
        mult, shift = self._pool_requant(spec, x, out)
        p = PoolShape(n, c, h, w, oh, ow, spec.kernel[0], spec.kernel[1], spec.strides[0],
                      spec.strides[1], spec.pads, spec.mode, spec.count_pad, x.dtype, mult, shift)
        self.insns += lower_pool(p, self.m, x_addr=x.addr, out_addr=out.addr, name=out.name)
        kind = "global_avg_pool" if spec.kernel == (h, w) and spec.mode == "avg" else f"{spec.mode}_pool2d"
        return {"name": f"{kind}:{out.name}", "var": out.name, "op": kind, "precision": LABELS[x.dtype],
                "min_dram_bytes": x.nbytes + out.nbytes, "min_write_bytes": out.nbytes}

    def _elt_op(self, spec: C.EltSpec, refs: list, out: Ref) -> Elt:
        """The ALU op of an element-wise composite (the int8 mode adds its shifts)."""
        return Elt(spec.op, refs[0].dtype)

    def _elt(self, spec: C.EltSpec, env, out: Ref) -> dict:
        refs = [env[a] if isinstance(a, relax.Var) and a in env else self.ref(a) for a in spec.args]
        n = int(np.prod(spec.out_shape))
        self.insns += lower_eltwise(self._elt_op(spec, refs, out), n, self.m, a_addr=refs[0].addr,
                                    b_addr=refs[1].addr if len(refs) > 1 else None, out_addr=out.addr)
        return {"name": f"{spec.op}:{out.name}", "var": out.name, "op": spec.op,
                "precision": LABELS[refs[0].dtype], "min_dram_bytes": sum(r.nbytes for r in refs) + out.nbytes,
                "min_write_bytes": out.nbytes}

    # ---- host ops ---------------------------------------------------------------------
    def _host_call(self, var, call):
        """An op binding on the host (:mod:`target_dlac.codegen.hostops`): one host op, one per
        element of a tuple result, or a :class:`Pending` value for a result dLAC memory cannot
        hold (inlined into the host ops that consume it)."""
        op = op_name(call)
        if isinstance(var.ty, relax.TupleType):
            out = []
            for i, field in enumerate(var.ty.fields):
                if not isinstance(field, relax.TensorType) or field.shape is None:
                    raise CodegenError(f"host {hostops.where(op, var.name, self.layers)}: item {i} of its "
                                       "result is not a static tensor")
                fn, args = hostops.host_function(call, self.env, item=i)
                out.append(self._host(f"{var.name}_{i}", fn, args, shape_of(fn.body), op=op))
            return tuple(out)
        if dtype_of(var) not in DTYPE_SIZES and shape_of(var) is not None:
            return hostops.Pending(var.name, op, call)
        fn, args = hostops.host_function(call, self.env)
        return self._host(var.name, fn, args, shape_of(var), op=op)

    def _host(self, name, fn, args, out_shape, op=None):
        dtype = dtype_of(fn.body)            # e.g. int8 between a host quantize and dequantize
        if out_shape is None:
            what = "a tuple" if isinstance(fn.body.ty, relax.TupleType) else "not a static tensor"
            raise CodegenError(f"host {hostops.where(op or 'composite', name, self.layers)}: its result is "
                               f"{what}; a host op returns one static tensor")
        if dtype is not None and dtype not in DTYPE_SIZES:
            raise CodegenError(f"host {hostops.where(op or 'composite', name, self.layers)}: its {dtype} "
                               f"result cannot be held in dLAC memory ({', '.join(DTYPE_SIZES)} only)")
        idx = len(self.host_ops)
        fname = f"host_{idx}"
        self.host_funcs[fname] = fn.with_attr("global_symbol", fname)
        out = self._alloc(name, out_shape, dtype if dtype in DTYPE_SIZES else "float32")
        start = len(self.insns)
        self.insns += [Insn("HOST", {"index": idx}), Insn("SYNC")]
        self.host_ops.append({"func": fname, "op": (op or "composite").removeprefix("relax."),
                              "inputs": [a.name for a in args], "outputs": [out.name]})
        self.layers.append(LayerMeta(f"host:{name}", name, "host", "fp32", start, len(self.insns)))
        return out

    # ---- program ----------------------------------------------------------------------
    def _finish(self, outs) -> Program:
        flat = list(outs) if isinstance(outs, tuple) else [outs]
        by_name = {t.name: t for t in self.tensors}
        for i, r in enumerate(flat):
            if not isinstance(r, Ref):
                raise CodegenError("nested tuple outputs are not supported")
            src = by_name.get(r.name)
            if src is None or src.role in ("input", "constant"):
                raise CodegenError(f"output {i} is an input or constant of the model; nothing to compute")
            self.tensors.append(Tensor(f"output_{i}", "output", r.shape, r.dtype, r.addr))
        # constants first, then the activations (moved from their virtual range)
        base = align(len(self.consts))
        dram_bytes = base + self._act_end
        if dram_bytes > self.m.dram_bytes:
            raise CodegenError(f"the program needs {dram_bytes} bytes of DRAM; the machine has "
                               f"{self.m.dram_bytes}")
        for t in self.tensors:
            if t.addr >= ACT_BASE:
                t.addr += base - ACT_BASE
        for ins in self.insns:
            if ins.op in ("LOAD", "STORE") and ins.f["dram"] >= ACT_BASE:
                ins.f["dram"] += base - ACT_BASE
        host = None
        if self.host_funcs:
            host = hostgraph.encode(tvm.IRModule(self.host_funcs), "host")
        meta = {"dram_bytes": dram_bytes, "constants_bytes": len(self.consts),
                "layers": [layer.to_dict() for layer in self.layers],
                "host_ops": self.host_ops, "fallbacks": self.fallbacks}
        return Program(self.m, self.insns, bytes(self.consts), self.tensors, meta, host)


def generate(mod: tvm.IRModule, machine: Machine | None = None, **kw) -> Program:
    """Lower a partitioned module (the ``partition`` stage) to a dLAC program."""
    return Codegen(mod, machine or Machine(), **kw).generate()
