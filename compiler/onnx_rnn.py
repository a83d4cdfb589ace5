"""ONNX ``LSTM`` and ``GRU`` unrolled over a static sequence into ops dlac places (used by
:func:`compiler.onnx_rewrite.prepare_graph`; TVM 0.27's Relax ONNX importer has no
converter for either, and dlac wants the gate matmuls as dLAC dense layers).

For each direction ``d`` (forward, reverse, or both) the rewrite emits, with the equations
of the ONNX operator specification (gate order ``i o f c`` for LSTM, ``z r h`` for GRU)::

    XP   = MatMul(Reshape(X, (T*B, I)), W[d]^T) + bias      # one dense layer (X time-major)
    per step t (in time order, or reversed):
      g    = XP[t*B : (t+1)*B] [+ MatMul(H, R[d]^T)]       # the recurrent dense layer
      LSTM: i, o, f = Sigmoid(g_i), Sigmoid(g_o), Sigmoid(g_f);  c~ = Tanh(g_c)
            C = f*C + i*c~;  H = o*Tanh(C)
      GRU:  z, r = Sigmoid(g_z + H R_z^T), Sigmoid(g_r + H R_r^T)
            h~ = Tanh(g_h + (r*H) R_h^T)                (linear_before_reset = 0)
            h~ = Tanh(g_h + r*(H R_h^T + Rb_h))         (linear_before_reset = 1)
            H  = h~ + z*(H - h~)                        (= (1-z)*h~ + z*H)

``bias`` is ``Wb + Rb`` (GRU: without ``Rb_h`` when ``linear_before_reset = 1``).  With no
``initial_h`` / ``initial_c`` the states start at zero and the first step's recurrent
product (zero) is left out.  ``Y``, ``Y_h`` and ``Y_c`` are rebuilt with ``Reshape`` and
``Concat`` in the node's ``layout`` (``layout = 1``: ``X`` is transposed to time-major
first); rows, gates and states are cut with ``Slice`` (its opset-10 form: TVM imports
``Gather`` as index arithmetic on shapes, which dlac cannot place).  The weights must be
constants (initializers); the gate matmuls' weights are new initializers named
``<node>.W_<dir>`` / ``<node>.R_<dir>`` (GRU with ``linear_before_reset = 0``: ``R_<dir>``
holds the ``z r`` columns and ``<node>.Rh_<dir>`` the ``h`` ones), which give the layer
names.  Refused, naming the node: non-default activations, ``clip``,
``input_forget``, peepholes ``P``, a ``sequence_lens`` that is not constant and equal to
the sequence length, a non-static input shape.
"""

from __future__ import annotations

import numpy as np

from target_dlac.core.errors import ModelLoadError

_DEFAULT_ACTS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}


def _value(graph, name: str):
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def unroll_rnn(node, graph, shapes: dict, names, attr, where: str, label: str):
    """``(nodes, initializers)`` replacing one ``LSTM`` / ``GRU`` node (see the module)."""
    import onnx
    from onnx import helper, numpy_helper

    def refuse(why):
        raise ModelLoadError(f"{where}: {why}", where=label)

    kind = node.op_type
    ins = list(node.input) + [""] * 8
    acts = [a.decode() if isinstance(a, bytes) else a for a in (attr(node, "activations") or [])]
    if acts and [a.lower() for a in acts] != _DEFAULT_ACTS[kind] * (len(acts) // len(_DEFAULT_ACTS[kind])):
        refuse(f"activations {acts} are not the default {_DEFAULT_ACTS[kind]}; dlac unrolls only those")
    if attr(node, "clip") is not None:
        refuse("clip is not supported")
    if int(attr(node, "input_forget", 0) or 0):
        refuse("input_forget is not supported")
    if kind == "LSTM" and ins[7]:
        refuse("peephole weights (P) are not supported")
    layout = int(attr(node, "layout", 0) or 0)
    direction = attr(node, "direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    dirs = {"forward": ["fwd"], "reverse": ["rev"], "bidirectional": ["fwd", "rev"]}.get(direction)
    if dirs is None:
        refuse(f"unknown direction {direction!r}")
    x = ins[0]
    xs = shapes.get(x)
    if xs is None or len(xs) != 3:
        refuse(f"its input {x!r} has no static 3-D shape; give --input-shape")
    steps, batch = (xs[0], xs[1]) if layout == 0 else (xs[1], xs[0])
    w, r = _value(graph, ins[1]), _value(graph, ins[2])
    if w is None or r is None:
        refuse("its weights W and R must be constants (initializers)")
    gates = 4 if kind == "LSTM" else 3
    hidden = int(attr(node, "hidden_size", 0) or r.shape[-1])
    if w.shape[0] != len(dirs) or w.shape[1] != gates * hidden or r.shape[1:] != (gates * hidden, hidden):
        refuse(f"W {list(w.shape)} / R {list(r.shape)} do not match hidden_size {hidden} and "
               f"{len(dirs)} direction(s)")
    b = _value(graph, ins[3]) if ins[3] else np.zeros((len(dirs), 2 * gates * hidden), w.dtype)
    if b is None:
        refuse("its bias B must be a constant (initializer)")
    if ins[4]:
        lens = _value(graph, ins[4])
        if lens is None or np.any(lens != steps):
            refuse(f"sequence_lens must be a constant equal to the sequence length {steps}")
    lbr = int(attr(node, "linear_before_reset", 0) or 0) if kind == "GRU" else 0
    base = node.name or node.output[0]
    nodes, inits = [], []

    def const(tag, arr):
        """A weight as an initializer (a parameter TVM names); shapes and indices as
        ``Constant`` nodes (TVM's importer needs them as constants, not parameters)."""
        t = numpy_helper.from_array(np.array(arr, order="C"), names(f"{base}.{tag}"))   # keeps rank 0
        if t.data_type == onnx.TensorProto.INT64:
            nodes.append(helper.make_node("Constant", [], [t.name], name=t.name, value=t))
        else:
            inits.append(t)
        return t.name

    def op(op_type, inputs, tag, **kw):
        out = names(f"{base}/{tag}")
        nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **kw))
        return out

    def shape(*dims):
        return const("shape", np.array(dims, np.int64))

    def cut(v, axis, lo, hi, tag):       # Slice (TVM imports Gather as index arithmetic)
        return op("Slice", [v, const("lo", np.array([lo], np.int64)), const("hi", np.array([hi], np.int64)),
                            const("axis", np.array([axis], np.int64))], tag)

    def state(idx, d):                  # initial_h / initial_c of direction d, or None
        if not ins[idx]:
            return None
        return op("Reshape", [cut(ins[idx], layout, d, d + 1, f"init{idx}_{d}"), shape(batch, hidden)],
                  f"init{idx}_{d}_2d")

    time_axis = 0 if layout == 0 else 1
    xt_major = x if layout == 0 else op("Transpose", [x], "x_time_major", perm=[1, 0, 2])
    seq_h, last = {}, {}
    for d, tag in enumerate(dirs):
        wd, rd, bd = w[d].T, r[d].T, b[d]
        wb, rb = bd[:gates * hidden], bd[gates * hidden:]
        xbias = wb + rb
        if lbr:
            xbias = xbias.copy()
            xbias[2 * hidden:] = wb[2 * hidden:]
        flat = op("Reshape", [xt_major, shape(steps * batch, xs[2])], f"x_rows_{tag}")
        proj = op("MatMul", [flat, const(f"W_{tag}", wd)], f"x_proj_{tag}")
        proj = op("Add", [proj, const(f"xbias_{tag}", xbias)], f"x_bias_{tag}")     # rows t*B + b
        h, c = state(5, d), state(6, d) if kind == "LSTM" else None
        rname = rzr = rh = None
        order = range(steps) if tag == "fwd" else range(steps - 1, -1, -1)
        for t in order:
            s = f"{tag}{t}"
            g = cut(proj, 0, t * batch, (t + 1) * batch, f"xt_{s}")
            if kind == "LSTM":
                if h is not None:
                    rname = rname or const(f"R_{tag}", rd)
                    g = op("Add", [g, op("MatMul", [h, rname], f"h_proj_{s}")], f"gates_{s}")
                gi, go, gf, gc = (cut(g, 1, k * hidden, (k + 1) * hidden, f"g{k}_{s}") for k in range(4))
                i, o, f = (op("Sigmoid", [v], f"sig_{s}") for v in (gi, go, gf))
                cand = op("Mul", [i, op("Tanh", [gc], f"cand_{s}")], f"ic_{s}")
                c = cand if c is None else op("Add", [op("Mul", [f, c], f"fc_{s}"), cand], f"c_{s}")
                h = op("Mul", [o, op("Tanh", [c], f"tc_{s}")], f"h_{s}")
            else:
                gz, gr, gh = (cut(g, 1, k * hidden, (k + 1) * hidden, f"g{k}_{s}") for k in range(3))
                if h is not None:
                    if lbr:
                        rname = rname or const(f"R_{tag}", rd)
                        hp = op("MatMul", [h, rname], f"h_proj_{s}")
                        hz, hr, hh = (cut(hp, 1, k * hidden, (k + 1) * hidden, f"h{k}_{s}") for k in range(3))
                    else:
                        rzr = rzr or const(f"R_{tag}", rd[:, :2 * hidden])
                        hp = op("MatMul", [h, rzr], f"h_proj_{s}")
                        hz, hr = (cut(hp, 1, k * hidden, (k + 1) * hidden, f"h{k}_{s}") for k in range(2))
                    gz, gr = op("Add", [gz, hz], f"z_in_{s}"), op("Add", [gr, hr], f"r_in_{s}")
                z, rg = op("Sigmoid", [gz], f"z_{s}"), op("Sigmoid", [gr], f"r_{s}")
                if lbr:
                    rbh = const(f"rbh_{tag}", rb[2 * hidden:])
                    inner = rbh if h is None else op("Add", [hh, rbh], f"hh_b_{s}")
                    gh = op("Add", [gh, op("Mul", [rg, inner], f"r_hh_{s}")], f"h_in_{s}")
                elif h is not None:
                    rh = rh or const(f"Rh_{tag}", rd[:, 2 * hidden:])
                    rhp = op("MatMul", [op("Mul", [rg, h], f"rh_{s}"), rh], f"rh_proj_{s}")
                    gh = op("Add", [gh, rhp], f"h_in_{s}")
                cand = op("Tanh", [gh], f"cand_{s}")
                if h is None:
                    h = op("Sub", [cand, op("Mul", [z, cand], f"zc_{s}")], f"h_{s}")
                else:
                    diff = op("Sub", [h, cand], f"hd_{s}")
                    h = op("Add", [cand, op("Mul", [z, diff], f"zd_{s}")], f"h_{s}")
            seq_h[(d, t)] = h
        last[d] = (h, c)
    outs = list(node.output) + ["", "", ""]
    nd = len(dirs)
    if outs[0]:
        per_t = []
        for t in range(steps):
            parts = [op("Reshape", [seq_h[(d, t)], shape(*((1, 1, batch, hidden) if layout == 0 else
                                                            (batch, 1, 1, hidden)))], f"y_{d}_{t}")
                     for d in range(nd)]
            per_t.append(op("Concat", parts, f"y_t{t}", axis=1 if layout == 0 else 2))
        nodes.append(helper.make_node("Concat", per_t, [outs[0]], name=names(f"{base}/Y"), axis=time_axis))
    for k, out in ((0, outs[1]), (1, outs[2] if kind == "LSTM" else "")):
        if not out:
            continue
        parts = [op("Reshape", [last[d][k], shape(*((1, batch, hidden) if layout == 0 else (batch, 1, hidden)))],
                    f"state{k}_{d}") for d in range(nd)]
        nodes.append(helper.make_node("Concat", parts, [out], name=names(f"{base}/state{k}"),
                                      axis=0 if layout == 0 else 1))
    return nodes, inits
