"""From a :class:`CompileResult` to a dLAC program / ``.dlac`` file.

``build_program`` runs the codegen on the partition stage, then records in the
metadata what a user needs to trust and reproduce the binary: compiler version,
source model hash, quantization config, input names, per-layer schedules; and it
embeds the graph the binary computes (``REF`` section) so ``dlac run --check`` can
build the TVM CPU reference of exactly that graph:

* ``activations="fp32"``: the quantized float graph (the ``fold`` stage);
* ``activations="fp16"``: the same graph with float16 storage between ops, built by the
  fp16 codegen (:mod:`target_dlac.codegen.modes.fp16`);
* ``activations="int8"``: the all-integer graph, built by the int8 codegen with the
  same integer parameters as the instructions (:mod:`target_dlac.codegen.modes.intmath`).  Its
  exponents come from calibration: the float program runs in the interpreter on the
  calibration inputs and every tensor's largest magnitude is recorded.  ``act_bits`` 4 or 2
  (int8 only): the outputs of ReLU-like conv / dense layers without a residual are unsigned
  4- / 2-bit tensors (:func:`target_dlac.codegen.modes.intmath.unsigned_output`; held one per
  byte, docs/isa.md "Integer mode"); the metadata then records ``act_bits`` and
  ``low_bit_tensors`` (their names).  ``act_bits=8`` builds exactly the int8 binary.

The ``REF`` graph's layer weights are not stored twice: a weight constant equal (bit for
bit) to one the codegen packed refers to its blocks in ``CONSTS``
(:mod:`target_dlac.binary.hostgraph.weights`) and is decoded from them when the binary is
loaded; scales, biases and the other small constants stay in the section.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from compiler import __version__
from target_dlac.core.errors import ConfigError
from target_dlac.core.text import printable

ACTIVATIONS = ("fp32", "fp16", "int8")
#: activation widths of an integer build: 8 (int8 everywhere), 4 or 2 (after ReLU)
ACT_BITS = (8, 4, 2)


def check_act_bits(act_bits, activations: str, flag: str = "act_bits") -> int:
    """``act_bits`` as an int: one of :data:`ACT_BITS`, and other than 8 only for int8
    activations (``flag``: how the caller names the option in the message)."""
    if (isinstance(act_bits, bool) or not isinstance(act_bits, (int, np.integer))
            or int(act_bits) not in ACT_BITS):
        raise ConfigError(f"{flag} {printable(str(act_bits)[:20])}: integer activations are 8, 4 or 2 bits wide")
    if act_bits != 8 and activations != "int8":
        raise ConfigError(f"{flag} {act_bits} needs int8 activations (--activations int8); this "
                          f"build has {activations}")
    return int(act_bits)


def calibrate(codegen, program, calib: dict) -> dict:
    """``{Relax var: max |value|}`` of every tensor ``codegen`` produced, over the samples
    of ``calib``: input name -> an array of the input's shape with any number of rows
    on the batch axis (split into batches of the program's size), or samples of the
    input's shape stacked on a new leading axis."""
    from target_dlac.sim.interpreter import Interpreter

    samples = calib_samples(program, calib)
    interp = Interpreter(program, check_races=False)
    host = None
    if program.host is not None:
        from target_dlac.sim.host import HostRunner
        host = HostRunner(program)
    where = {var: program.tensor(name) for var, name in codegen.produced.items()}
    stats: dict = {}
    for inputs in samples:
        interp.run(inputs, host_runner=host)
        dram = interp.mem["DRAM"]
        for var, t in where.items():
            raw = dram[t.addr:t.addr + t.nbytes].view(t.dtype)
            top = float(np.abs(raw).max()) if raw.size else 0.0
            stats[var] = max(stats.get(var, 0.0), top)
    return stats


def calib_samples(program, calib: dict, limit: int | None = None) -> list[dict]:
    """The samples of ``calib`` (input name -> an array of the input's shape with any number
    of rows on the batch axis, split into batches of the program's size, or samples of the
    input's shape stacked on a new leading axis) as input dicts, the first ``limit``."""
    inputs = {t.name: t for t in program.inputs}
    missing = sorted(set(inputs) - set(calib))
    if missing:
        raise ConfigError(f"calibration data lacks input(s) {missing}; it has {sorted(calib)}")
    samples = {}
    for name, t in inputs.items():
        a = np.asarray(calib[name], np.float32)
        shape = tuple(t.shape)
        if a.ndim == len(shape) and a.shape[1:] == shape[1:] and a.shape[0] % shape[0] == 0:
            a = a.reshape(-1, *shape)
        if a.shape[1:] != shape:
            raise ConfigError(f"calibration input {name!r} has shape {a.shape}; expected samples "
                              f"of shape {tuple(t.shape)} stacked on a leading axis")
        samples[name] = a
    count = min(len(a) for a in samples.values())
    if count == 0:
        raise ConfigError("calibration data holds no samples")
    if limit is not None:
        count = min(count, limit)
    return [{k: v[i] for k, v in samples.items()} for i in range(count)]


def check_tuning_log(path, activations: str) -> None:
    """A tuning log must exist, only a float32 build can use it, and each of its records
    must be plausible on its own (:func:`target_dlac.tune.tuning_log.check_records`: at least
    1 cycle and 1 trial, no more cycles than the default schedule's, not below its own
    lower bound), else :class:`target_dlac.tune.tuning_log.TuningLogError` naming the file,
    the line and the layer.  (The records applied to a layer are checked against the
    layer too, when the codegen asks: :func:`target_dlac.tune.tuning_log.schedule_resolver`.)"""
    import os

    from target_dlac.tune import tuning_log

    if not os.path.isfile(path):
        raise ConfigError(f"tuning log {str(path)!r} not found")
    if activations != "fp32":
        raise ConfigError("a tuning log holds schedules tuned for float32 activations; it cannot "
                          f"be applied to a build with {activations} activations")
    tuning_log.check_records(tuning_log.load(path))


def _tuning_log_schedules(result, machine, path, schedules, activations):
    """The codegen's ``schedules`` for a build with the tuning log at ``path``: per layer
    an explicit schedule (``schedules``, by layer name), else the best matching record,
    else the default.  Returns (function, tuning info for the metadata, filled in as the
    codegen asks)."""
    from target_dlac.tune import tuning_log


    mixed = "fp16" in result.config.activation_overrides.values()
    check_tuning_log(path, "mixed fp16" if activations == "fp32" and mixed else activations)
    records = tuning_log.load(path)
    resolve, counts = tuning_log.schedule_resolver(records, machine)
    explicit = schedules or {}

    def pick(layer):
        tuned = resolve(layer)
        return explicit.get(layer.name) or tuned

    info = {"log": str(path), "skipped_lines": records.skipped}
    return pick, info, counts


@dataclass(frozen=True)
class LayerProgress:
    """What ``build_program``'s ``progress`` callback gets after each conv / dense layer the
    codegen lowered: ``index`` of ``total`` (the plan's conv / dense layers; a layer left on
    the host is not reported), ``dims`` (dense ``KxN``, conv ``FxCxKHxKW@HxW``) and the wall
    ``seconds`` since the previous report (for the first: since the codegen started).
    ``stage``: ``codegen``, or ``calibration`` for the float32 pass of an int8 build."""
    stage: str
    index: int
    total: int
    name: str
    op: str
    precision: str
    dims: str
    seconds: float

    def line(self) -> str:
        w = len(str(self.total))
        tag = "" if self.stage == "codegen" else f" ({self.stage})"
        return (f"[{self.index:>{w}}/{self.total}] {self.op} {self.name} {self.dims} {self.precision}"
                f"{tag} ... {self.seconds:.1f} s")


def _dims(entry: dict) -> str:
    s = entry.get("shape") or {}
    try:
        if entry.get("op") == "dense":
            return f"{s['c']}x{s['f']}"
        cin = 1 if s.get("depthwise") else s["c"] // max(1, s.get("groups", 1))
        return f"{s['f']}x{cin}x{s['kh']}x{s['kw']}@{s['h']}x{s['w']}"
    except (KeyError, TypeError):
        return "?"


def _layer_progress(progress, total: int, stage: str):
    """The codegen's per-layer callback that times the layers and calls ``progress``."""
    if progress is None:
        return None
    state = {"n": 0, "t": time.perf_counter()}

    def step(entry: dict) -> None:
        now = time.perf_counter()
        state["n"] += 1
        progress(LayerProgress(stage, state["n"], max(total, state["n"]), str(entry.get("name")),
                               str(entry.get("op")), str(entry.get("precision")), _dims(entry),
                               now - state["t"]))
        state["t"] = time.perf_counter()
    return step


def build_program(result, machine=None, *, schedules: dict | None = None, reference: bool = True,
                  activations: str = "fp32", calib: dict | None = None, progress=None,
                  tuning_log=None, act_bits: int = 8, energy_table=None):
    """The dLAC program of ``result`` (see the module docstring).  ``progress``: called with
    a :class:`LayerProgress` after each conv / dense layer (``LayerProgress.line()`` is the
    CLI's line).  ``act_bits``: 8, or 4 / 2 with ``activations="int8"``.  ``energy_table``: an
    :class:`target_dlac.isa.energy.EnergyTable` to keep in the binary's META (the ``[energy]``
    table of the machine file; reports of its runs use it)."""
    from target_dlac.codegen.generator import Codegen
    from target_dlac.isa.machine import Machine

    if "partition" not in result.stages:
        raise ConfigError("build_program needs a result compiled through the partition stage")
    if activations not in ACTIVATIONS:
        raise ConfigError(f"activations={activations!r}: this version builds {ACTIVATIONS}")
    act_bits = check_act_bits(act_bits, activations)
    machine = machine or result.machine or Machine()
    mod = result.stages["partition"]
    tuned = None
    if tuning_log is not None:
        schedules, tuned, counts = _tuning_log_schedules(result, machine, tuning_log, schedules, activations)
    total = len(result.layers)
    if activations == "int8" and result.config.activation_overrides:
        raise ConfigError("per-layer activation overrides mix float16/float32 layers; the int8 "
                          "pipeline is whole-graph (drop the overrides or use fp32/fp16)")
    if activations == "fp32" and "fp16" in result.config.activation_overrides.values():
        activations = "fp16"      # mixed: fp32 by default, the overridden layers in fp16
        default_half = False
    else:
        default_half = True
    cg = codegen = None
    if activations != "fp16":        # fp16: the fp16 codegen below is the whole program
        stage = "calibration" if activations == "int8" else "codegen"
        cg = codegen = Codegen(mod, machine, **result.codegen_args(schedules, _layer_progress(progress, total, stage)))
        prog = cg.generate()
    ref_mod = result.stages["fold"]
    if activations == "fp16":
        from target_dlac.codegen.modes.fp16 import Fp16Codegen

        default = "fp16" if default_half else "fp32"
        half = {p.name: (p.activations or default) == "fp16" for p in result.layers}
        hcg = codegen = Fp16Codegen(mod, machine, half=lambda name: half.get(name, default == "fp16"),
                                    **result.codegen_args(schedules, _layer_progress(progress, total, "codegen")))
        prog = hcg.generate()
        ref_mod = hcg.reference_mod
    if activations == "int8":
        from passes.int8_weights import int8_weights
        from target_dlac.codegen.modes.integer import IntCodegen

        if calib is None:
            raise ConfigError("int8 activations need calibration data (--calib FILE.npz)")
        stats = calibrate(cg, prog, calib)
        plan = {p.var: p for p in int8_weights(result.stages["fold"], result.layers)}
        icg = codegen = IntCodegen(mod, machine, stats=stats, act_bits=act_bits,
                                   **result.codegen_args(schedules, _layer_progress(progress, total, "codegen"), plan))
        prog = icg.generate()
        ref_mod = icg.reference_mod
    prog.meta.update({
        "compiler": f"dlac {__version__}",
        "source": result.source, "source_hash": result.source_hash,
        "quant_config": result.config.to_dict(), "activations": activations,
        "input_names": list(result.input_names),
        "machine_hash": machine.hash(),
    })
    if act_bits != 8:       # only then: an 8-bit build stays byte for byte the int8 one
        prog.meta.update({"act_bits": act_bits, "low_bit_tensors": list(icg.low_bit)})
    if tuned is not None:
        prog.meta["tuning"] = {**tuned, **counts}
    if energy_table is not None:
        prog.meta["energy"] = energy_table.to_dict()
    if reference:
        from passes.partition import unpartition
        from target_dlac.binary import hostgraph

        # the layer weights come from the program's CONSTS blocks, not a second copy
        weights = hostgraph.WeightIndex(codegen.weight_blocks, prog.constants)
        prog.reference = hostgraph.encode(unpartition(ref_mod), "reference", level=1, weights=weights)
    return prog
