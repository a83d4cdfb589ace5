"""The graph format of the ``HOST`` and ``REF`` sections: a Relax graph in a closed vocabulary.

A ``.dlac`` file may carry two Relax modules: the host functions (ops dLAC does not run,
``HOST``) and the quantized graph that ``dlac run --check`` builds as its oracle (``REF``).
Neither is stored as TVM's own serialization (``tvm.ir.save_json`` can name any IR node,
external functions and low-level code among them, and ``load_json`` crashes on
self-referencing graphs).  Instead a section holds dlac's own description of the graph,
which dlac rebuilds itself from a closed vocabulary:

* every call is to a Relax operator of :data:`OPS` (high-level ops such as
  ``relax.nn.conv2d``; no ``call_tir``, ``call_packed``, externs or TIR), with the
  argument kinds the operator takes and the attributes of its attribute type, each
  checked against :data:`ATTRS` (types, ranges, layouts, dtypes);
* or to a function defined *earlier* in the section (no recursion);
* every operand refers to a parameter, a constant of the section, or an earlier node,
  so a graph is acyclic by construction; tuples and tuple items are the only other
  expressions;
* shapes are static; sizes, depths and counts are bounded (:data:`LIMITS`), and the
  estimated work of the whole graph too (per node: its reduction for conv2d, matmul and
  pooling, otherwise its largest tensor times the op's ``vocabulary.WORK`` factor).

The vocabulary is also what the frontends may place on the host
(``compiler.oplist.HOST_RELAX_OPS`` is derived from :data:`OPS`, and
``compiler.frontend_common.check_ops`` checks a host op's attributes with
:func:`~target_dlac.binary.hostgraph.vocabulary.attr_problem`, the schema's one check).

:func:`check_graph` validates all of that with plain Python (no TVM); :func:`decode`
then rebuilds the module with ``relax.BlockBuilder`` (TVM infers and checks every
node's type) and :mod:`target_dlac.sim.host` lowers it with ``tvm.compile``.
:func:`encode` (compile time) refuses a module with anything outside the vocabulary,
so an op that cannot be written in this form cannot be a host op.

Section layout, zlib-compressed (decompressed size capped at ``LIMITS.decompressed``)::

    0   8  magic b"DLACGRF1"
    8   4  u32 length J of the JSON description
    12  J  JSON (UTF-8): {"functions": [...], "constants": [...]}
    ...    constant data (each constant 16-byte aligned, offsets relative to this point)

JSON: ``functions`` is a list of ``{"name", "params": [{"name", "shape", "dtype"}],
"num_input"?: int, "nodes": [NODE...], "output": ARG}``; a NODE is
``{"op": NAME, "args": [ARG...], "attrs": {...}}``, ``{"call": FUNCTION_INDEX, "args": [...]}``
or ``{"value": ARG}``; an ARG is ``["p", i]`` (parameter), ``["c", i]`` (constant),
``["v", i]`` (node), ``["shape", [ints]]``, ``["int", v, dtype]``, ``["float", v, dtype]``
(``v`` finite, or the strings ``"inf"`` / ``"-inf"`` for open clip bounds; never NaN),
``["tuple", [ARG...]]`` or ``["item", ARG, i]``.  ``constants`` is a list of
``{"shape", "dtype", "offset"}`` (the constant's bytes in the section's data) or
``{"shape", "dtype", "consts": {...}}``: a layer weight rebuilt from the weight blocks of
the binary's ``CONSTS`` section (format, layout, kernel and tiles with their offsets;
:mod:`target_dlac.binary.hostgraph.weights`), so a ``REF`` graph does not hold a second
copy of the weights.  A section that uses them is read with the ``CONSTS`` bytes
(:class:`Section` carries them; :func:`parse` takes them too); every offset and size is
checked against that section and every block's contents as it is decoded.
"""

from __future__ import annotations

from .check import ALIGN, MAGIC, Graph, check_graph, inflate, pack, parse
from .encode import encode
from .rebuild import build, constant_arrays, decode, weight_index
from .vocabulary import ATTRS, DTYPES, LIMITS, OPS, Limits
from .weights import Section, WeightIndex

__all__ = ["ALIGN", "ATTRS", "DTYPES", "LIMITS", "MAGIC", "OPS", "Graph", "Limits", "Section",
           "WeightIndex", "build", "check_graph", "constant_arrays", "decode", "encode", "inflate",
           "pack", "parse", "weight_index"]
