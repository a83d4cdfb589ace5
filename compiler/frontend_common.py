"""What every frontend does after its importer: name layers, fix shapes, bind
weights as constants, and refuse ops dlac cannot place."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from target_dlac.core.ir import IntImm, cleanup, iter_bindings, op_name, shape_of
from passes.name_layers import name_layers

from target_dlac.core.errors import ConfigError, DynamicShapeError, UnsupportedOpError
from compiler.oplist import placement


@dataclass
class ImportedModel:
    """A model as a Relax module with its weights bound as constants."""

    mod: tvm.IRModule
    layer_names: dict[str, str]          # layer variable name -> source name, in layer order
    input_names: list[str]
    input_shapes: dict[str, tuple[int, ...]]
    source: str                          # "torch", "pt2" or "onnx"
    source_hash: str = ""
    extra: dict = field(default_factory=dict)


def tensor_hash(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()[:16]


def parse_shape(spec) -> tuple[int, ...]:
    """``'1x3x224x224'`` or a sequence of ints -> tuple of positive ints."""
    try:
        dims = tuple(int(d) for d in (spec.lower().split("x") if isinstance(spec, str) else spec))
    except (ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"bad shape {spec!r}: expected e.g. 1x3x224x224") from e
    if not dims or any(d <= 0 for d in dims):
        raise ConfigError(f"bad shape {spec!r}: every dimension must be a positive integer")
    return dims


def match_shapes(given: dict | None, declared: dict[str, list | None]) -> dict[str, tuple[int, ...]]:
    """Check user-given input shapes against the model's declared ones.

    ``declared`` maps each input to its dims: ints for static dimensions,
    anything else (a name, a symbolic variable) for dynamic ones; ``None`` when
    the rank is unknown.  Returns the full static shape of every input.
    """
    given = {name: parse_shape(shape) for name, shape in (given or {}).items()}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ConfigError(f"input shape given for unknown input(s) {', '.join(repr(u) for u in unknown)}; "
                          f"the model's inputs are {sorted(declared)}")
    shapes = {}
    for name, dims in declared.items():
        if name not in given:
            if dims is None or not all(isinstance(d, int) for d in dims):
                raise DynamicShapeError(name, "[" + ", ".join(str(d) for d in dims or ["?"]) + "]")
            shapes[name] = tuple(dims)
            continue
        g = given[name]
        if dims is not None:
            if len(dims) != len(g):
                raise ConfigError(f"input '{name}': given shape {g} has rank {len(g)}, the model's "
                                  f"input has rank {len(dims)}")
            for axis, (d, gv) in enumerate(zip(dims, g)):
                if isinstance(d, int) and d != gv:
                    raise ConfigError(f"input '{name}': given shape {g} conflicts with the model's "
                                      f"static dimension {d} at axis {axis}")
        shapes[name] = g
    return shapes


def resolve_shapes(mod: tvm.IRModule, input_shapes: dict | None) -> tvm.IRModule:
    """Bind symbolic input dimensions of ``main`` to the given shapes, or refuse clearly."""
    main = mod["main"]
    num_input = int(main.attrs["num_input"]) if main.attrs and "num_input" in main.attrs else len(main.params)
    declared, symbolic = {}, {}
    for p in main.params[:num_input]:
        ty = p.ty
        if not isinstance(ty, relax.TensorType):
            continue
        dims = list(ty.shape.values) if ty.shape is not None else None
        declared[p.name] = None if dims is None else [int(d) if isinstance(d, IntImm) else d for d in dims]
        symbolic[p.name] = dims
    shapes = match_shapes(input_shapes, declared)
    bindings = {}
    for name, dims in symbolic.items():
        for d, value in zip(dims or [], shapes[name]):
            if not isinstance(d, IntImm):
                if str(d) in bindings and bindings[str(d)] != value:
                    raise ConfigError(f"dimension '{d}' is given two values ({bindings[str(d)]}, {value})")
                bindings[str(d)] = value
    if bindings:
        mod = relax.transform.BindSymbolicVars(bindings, "main")(mod)
    return mod


def check_ops(mod: tvm.IRModule) -> None:
    """Refuse the first op that has neither a dLAC lowering nor a host fallback, naming
    the node and the layer before it.  A host op must also be writable in the binary's
    host graph: its attributes are checked against the graph format's schema here
    (``NHWC`` resize, a cubic mode the format does not take, ...), so the refusal names
    the model's layer rather than an internal host function."""
    from target_dlac.binary.hostgraph.encode import call_attrs
    from target_dlac.binary.hostgraph.vocabulary import attr_problem

    last_layer = None
    for b in iter_bindings(mod["main"]):
        name = op_name(b.value)
        if name is None:
            continue
        if name in ("relax.nn.conv2d", "relax.matmul"):
            last_layer = b.var.name
        where = b.var.name + (f", after layer '{last_layer}'" if last_layer else "")
        place = placement(name)
        if place is None:
            raise UnsupportedOpError(name, where)
        if place == "host":
            problem = attr_problem(name, call_attrs(b.value))
            if problem:
                raise UnsupportedOpError(name, where, f"the host graph format refuses it: {problem}")


def finalize(mod: tvm.IRModule, param_display: dict[str, str], input_shapes: dict,
             source: str, source_hash: str) -> ImportedModel:
    """Common tail of every frontend (``mod`` has weights as parameters)."""
    mod = resolve_shapes(mod, input_shapes)
    mod, layer_names = name_layers(mod, param_display)
    mod, params = relax.frontend.detach_params(mod)
    main = mod["main"]
    num_input = len(main.params) - len(params.get("main", []))
    weights = params.get("main", [])
    if weights:
        binding = {p: w for p, w in zip(main.params[num_input:], weights)}
        mod = relax.transform.BindParams("main", binding)(mod)
    mod = cleanup(mod)
    check_ops(mod)
    main = mod["main"]
    inputs = [p.name for p in main.params]
    shapes = {}
    for p in main.params:
        s = shape_of(p)
        if s is None:
            raise DynamicShapeError(p.name, p.ty)
        shapes[p.name] = s
    return ImportedModel(mod, layer_names, inputs, shapes, source, source_hash)


def weights_hash(arrays) -> str:
    return tensor_hash(*(np.ascontiguousarray(a).tobytes() for a in arrays))


def first_line(e: BaseException) -> str:
    """``Type: first line of the message``: a one-line summary of an error from torch / TVM."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
