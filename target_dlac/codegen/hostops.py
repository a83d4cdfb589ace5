"""How the codegen turns op bindings left on the host into host functions.

One op binding becomes one ``HOST`` instruction whose function (in the binary's ``HOST``
section) takes the binding's tensor operands as parameters and returns one tensor.  Two
kinds of results have no single tensor in DRAM, and are handled here:

* **tuple results** (``split``, ``chunk``): one host op per element; element ``i``'s
  function computes the op and returns item ``i``.  The op is recomputed per element
  (``split`` is a copy: cheap), and every host op keeps exactly one result, so the
  ``host_ops`` table, the runner's signature check and the ``REF`` graph are unchanged;
* **results dLAC memory cannot hold** (``bool`` from ``greater``, ``equal``, ...: the
  ``x > 0`` of PReLU, the mask of ``where``): not stored but kept as a :class:`Pending`
  expression, inlined into each host op that consumes it.  A pending value consumed by a
  dLAC layer or returned by the model is refused, naming the op and the layer before it.

Plain Relax construction: no codegen state, so the generator stays the only owner of DRAM,
instructions and the layer table.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import relax

from target_dlac.core.errors import CodegenError

@dataclass
class Pending:
    """An op binding whose result is not stored: inlined into the host ops that use it."""
    name: str           # the Relax variable (for messages)
    op: str
    call: relax.Call


def _flat(args):
    return [f for a in args for f in (a.fields if isinstance(a, relax.Tuple) else [a])]


def host_function(call: relax.Call, env: dict, item: int | None = None):
    """``(function, operands)``: a Relax function computing ``call`` (item ``item`` of its
    tuple result, if given) from parameters, and the values of ``env`` (Refs) it takes, in
    parameter order.  Operands bound to a :class:`Pending` are computed inside the function;
    an operand bound to a tuple of Refs becomes one parameter per element."""
    leaves: dict = {}                       # Relax var -> its Ref, or a tuple of Refs

    def collect(c):
        for a in _flat(c.args):
            if not isinstance(a, relax.Var) or a in leaves:
                continue
            v = env.get(a)
            if v is None:
                raise CodegenError(f"variable {a.name} is used before it is computed")
            if isinstance(v, Pending):
                collect(v.call)
            else:
                leaves[a] = v
    collect(call)
    params, operands, bound = [], [], {}
    for a, v in leaves.items():
        if isinstance(v, tuple):
            ps = [relax.Var(f"in{len(params) + i}", relax.TensorType(r.shape, r.dtype)) for i, r in enumerate(v)]
            params += ps
            operands += list(v)
            bound[a] = relax.Tuple(ps)
        else:
            p = relax.Var(f"in{len(params)}", a.ty)
            params.append(p)
            operands.append(v)
            bound[a] = p
    bb = relax.BlockBuilder()
    with bb.function("f", params):
        def emit(c):
            def sub(a):
                if isinstance(a, relax.Tuple):
                    return relax.Tuple([sub(f) for f in a.fields])
                if not isinstance(a, relax.Var):
                    return a
                if a not in bound:                       # a pending operand
                    bound[a] = emit(env[a].call)
                return bound[a]
            return bb.emit(relax.Call(c.op, [sub(a) for a in c.args], c.attrs, c.ty_args))
        out = emit(call)
        if item is not None:
            out = bb.emit(relax.TupleGetItem(out, item))
        bb.emit_func_output(out)
    return bb.get()["f"], operands


def last_layer(layers) -> str | None:
    """The name of the last dLAC layer emitted so far (for messages), or None."""
    for layer in reversed(layers):
        if layer.op != "host":
            return layer.name
    return None


def where(op: str, node: str, layers) -> str:
    """``op 'relax.split' at node 'lv3' (after layer 'features.1')`` for messages."""
    after = last_layer(layers)
    return f"op '{op}' at node '{node}'" + (f" (after layer '{after}')" if after else " (before any layer)")
