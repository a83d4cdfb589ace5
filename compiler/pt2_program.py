"""Checks of a ``.pt2`` program's JSON (``models/model.json``) and of the deserialized graph:
names and qualified names are identifiers (torch pastes them into generated source),
call targets are torch ops or operator/math builtins, pytree contexts are plain
containers, and symbolic shape expressions are parsed strictly (torch would hand them to
``sympy.sympify``, which is ``eval``).  Used by :mod:`compiler.pt2_archive`.
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import keyword
import re

from target_dlac.core.errors import ModelLoadError

#: Bounds on what the JSON may nest and on one symbolic expression.
PT2_MAX_DEPTH = 200               # JSON / treespec nesting
PT2_MAX_EXPR_CHARS = 4000         # one symbolic shape expression


def refuse(path: str, member: str | None, msg: str) -> ModelLoadError:
    return ModelLoadError(f"{msg} (archive member '{member}')" if member else msg, where=path)


#: dicts of models/model.json keyed by a graph value's name
_VALUE_MAPS = {"tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values",
               "custom_obj_values"}
#: dicts keyed by data that torch does not evaluate
_DATA_MAPS = {"range_constraints", "opset_version", "treespec_namedtuple_fields", "metadata",
              "as_string_to_argument"}
_NAME_FIELDS = {"name", "as_name", "user_input_name"}
_FQN_FIELDS = {"parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn"}
_IDENT = r"(?!__)[A-Za-z_][A-Za-z0-9_]*"
#: node targets: ops of torch's own namespaces, and the builtins of symbolic shape code
_TARGET = re.compile(rf"torch\.ops\.(aten|prims|higher_order|quantized_decomposed|quantized)"
                     rf"(\.{_IDENT}){{1,2}}|_operator\.{_IDENT}|math\.{_IDENT}|torch\._?sym_{_IDENT}")
_TREESPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict",
                   "torch.fx.immutable_collections.immutable_list",
                   "torch.fx.immutable_collections.immutable_dict"}


def _ident_ok(s) -> bool:
    return isinstance(s, str) and len(s) <= 1024 and s.isidentifier()


def fqn_ok(s, allow_empty: bool = True) -> bool:
    if not isinstance(s, str) or len(s) > 4096:
        return False
    if s == "":
        return allow_empty
    return all(p.isidentifier() or p.isdigit() for p in s.split("."))


def check_program(d, path: str, member: str) -> None:
    """Refuse the strings of ``models/model.json`` that torch would turn into code."""

    def bad(msg):
        raise refuse(path, member, msg)

    def walk(o, key, depth):
        if depth > PT2_MAX_DEPTH:
            bad("nested too deeply")
        if isinstance(o, dict):
            if key in _VALUE_MAPS:
                for k, v in o.items():
                    if not _ident_ok(k):
                        bad(f"value name {k[:80]!r} in {key} is not an identifier")
                    walk(v, None, depth + 1)
            elif key in _DATA_MAPS:
                for v in o.values():
                    walk(v, None, depth + 1)
            else:
                for k, v in o.items():
                    walk(v, k, depth + 1)
        elif isinstance(o, list):
            for v in o:
                walk(v, key, depth + 1)
        elif isinstance(o, str):
            if key in _NAME_FIELDS and o and not _ident_ok(o):
                bad(f"{key} {o[:80]!r} is not an identifier (torch pastes names into Python source)")
            elif key == "forward_arg_names" and not _ident_ok(o):
                bad(f"argument name {o[:80]!r} is not an identifier")
            elif key in _FQN_FIELDS and not fqn_ok(o):
                bad(f"{key} {o[:80]!r} is not a qualified attribute name")
            elif key in ("target", "as_operator") and not _TARGET.fullmatch(o):
                bad(f"node target {o[:80]!r} is not an op of torch's own namespaces or an "
                    "operator/math builtin")
            elif key == "expr_str":
                _check_sym_expr(o, bad)
            elif key in ("in_spec", "out_spec"):
                _check_treespec(o, bad)
            elif key == "class_fqn" and not fqn_ok(o, allow_empty=False):
                bad(f"class name {o[:80]!r} is not a qualified name")

    if not isinstance(d, dict):
        bad("not an exported program (a JSON object was expected)")
    walk(d, None, 0)


def _check_treespec(s: str, bad) -> None:
    """A pytree spec of plain containers whose contexts hold no JSON objects (torch's
    ``enum_object_hook`` imports the module an ``__enum__`` object names)."""
    try:
        protocol, spec = json.loads(s)
    except (ValueError, TypeError, RecursionError):
        bad(f"pytree spec {s[:80]!r} is not a [protocol, spec] JSON pair")
    if protocol != 1:
        bad(f"pytree spec protocol {protocol!r} (dlac reads protocol 1)")

    def plain(v, depth):
        if depth > PT2_MAX_DEPTH or isinstance(v, dict):
            return False
        return all(plain(x, depth + 1) for x in v) if isinstance(v, list) else True

    def walk(node, depth):
        if depth > PT2_MAX_DEPTH or not isinstance(node, dict):
            bad("malformed pytree spec")
        if node.get("type") not in _TREESPEC_TYPES:
            bad(f"pytree spec of type {str(node.get('type'))[:80]!r}; dlac takes tuples, lists "
                "and dicts of tensors")
        ctx = node.get("context")
        if ctx is not None:
            try:
                ok = isinstance(ctx, str) and plain(json.loads(ctx), 0)
            except (ValueError, RecursionError):
                ok = False
            if not ok:
                bad(f"pytree context {str(ctx)[:80]!r} is not a plain JSON list")
        children = node.get("children_spec") or []
        if not isinstance(children, list):
            bad("malformed pytree spec")
        for c in children:
            walk(c, depth + 1)

    walk(spec, 0)


#: functions a symbolic expression may call: torch's sympy functions (the deserializer's
#: ``sympy_functions``), the constructors ``sympy.srepr`` writes (torch serializes
#: expressions that way: ``Mul(Integer(8), Symbol('s39', positive=True, integer=True))``)
#: and plain sympy arithmetic, logic and relations
_SYM_CALLS = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
    "Symbol", "Dummy", "Integer", "Float", "Rational", "Add", "Mul", "Pow",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "Min", "Max", "Abs", "floor",
    "ceiling", "Piecewise", "ITE", "sqrt",
}
_SYM_NAMES = {"oo", "zoo", "nan", "pi", "E", "true", "false", "int_oo"}
_SYM_ASSUMPTIONS = {"integer", "positive", "negative", "nonnegative", "nonpositive", "real",
                    "finite", "infinite", "zero", "nonzero", "even", "odd", "rational",
                    "commutative", "extended_real", "evaluate"}
_POW_LIKE = {"Pow", "PowByNatural", "FloatPow", "LShift", "RShift"}
_SYM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|[-+]?inf|nan")
_MAX_EXPONENTS = 4096    # product of the constant exponents in one expression


@functools.lru_cache(maxsize=1)
def _namespaces() -> tuple[frozenset, frozenset]:
    """Names sympy's parser resolves: sympy's own, and Python's builtins."""
    import sympy

    return frozenset(vars(sympy)), frozenset(dir(builtins))


def _check_sym_expr(s: str, bad) -> None:
    """``s`` goes to ``sympy.sympify``, i.e. ``eval``: it must parse to arithmetic,
    comparisons and logic over numbers, symbols and the functions of :data:`_SYM_CALLS`
    (no attribute, no name of a Python builtin or of another sympy object, no string
    but a symbol's name or a float's digits), with exponents small enough to evaluate."""
    if len(s) > PT2_MAX_EXPR_CHARS:
        bad(f"symbolic expression of {len(s)} characters")
    try:
        tree = ast.parse(s, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        bad(f"symbolic expression {s[:80]!r} does not parse")
    sympy_ns, builtin_ns = _namespaces()
    budget = [_MAX_EXPONENTS]

    def number(n) -> int | float | None:
        """The value of a numeric literal (``3``, ``-3``, ``Integer(3)``), else None."""
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            v = number(n.operand)
            return None if v is None else -v
        if isinstance(n, ast.Constant) and type(n.value) in (int, float):
            return n.value
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "Integer"
                and len(n.args) == 1 and not n.keywords):
            return number(n.args[0])
        return None

    def exponent_ok(e) -> bool:
        v = number(e)
        if v is None:       # symbolic: fine unless it is itself a power of numbers
            return not (isinstance(e, ast.BinOp) and isinstance(e.op, ast.Pow)) and not (
                isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id in _POW_LIKE)
        if abs(v) > 64:
            return False
        budget[0] //= max(1, int(abs(v)))
        return budget[0] > 0

    def ok(n) -> bool:
        if isinstance(n, ast.Expression):
            return ok(n.body)
        if isinstance(n, ast.Constant):
            v = n.value
            return type(v) is bool or (type(v) is int and abs(v) < 1 << 64) or type(v) is float
        if isinstance(n, ast.Name):
            name = n.id
            if name in _SYM_CALLS or name in _SYM_NAMES:
                return True
            return (_SYM_NAME.fullmatch(name) is not None and not keyword.iskeyword(name)
                    and name not in builtin_ns and name not in sympy_ns)
        if isinstance(n, ast.BinOp):
            if isinstance(n.op, ast.Pow):
                if not exponent_ok(n.right):
                    return False
            elif not isinstance(n.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod,
                                       ast.BitAnd, ast.BitOr)):
                return False
            return ok(n.left) and ok(n.right)
        if isinstance(n, ast.UnaryOp):
            return isinstance(n.op, (ast.USub, ast.UAdd, ast.Not, ast.Invert)) and ok(n.operand)
        if isinstance(n, ast.BoolOp):
            return all(ok(v) for v in n.values)
        if isinstance(n, ast.Compare):
            return (all(isinstance(o, (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE))
                        for o in n.ops) and ok(n.left) and all(ok(c) for c in n.comparators))
        if isinstance(n, ast.Tuple):
            return all(ok(e) for e in n.elts)
        if isinstance(n, ast.Call):
            if not isinstance(n.func, ast.Name) or n.func.id not in _SYM_CALLS:
                return False
            fname, args = n.func.id, list(n.args)
            if any(isinstance(a, ast.Starred) for a in args):
                return False
            if fname in ("Symbol", "Dummy", "Float"):
                first = args[0] if args else None
                if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                    if fname != "Float":
                        return False
                else:
                    pattern = _FLOAT_TEXT if fname == "Float" else _SYM_NAME
                    if len(first.value) > 64 or not pattern.fullmatch(first.value):
                        return False
                    args = args[1:]
            if fname in _POW_LIKE and (len(args) != 2 or not exponent_ok(args[1])):
                return False
            for k in n.keywords:
                v = k.value.value if isinstance(k.value, ast.Constant) else None
                if not ((k.arg in _SYM_ASSUMPTIONS and type(v) is bool)
                        or (k.arg == "precision" and type(v) is int and 0 < v <= 1000)):
                    return False
            return all(ok(a) for a in args)
        return False

    if not ok(tree):
        bad(f"symbolic expression {s[:80]!r} is not plain arithmetic over symbols (torch would "
            "eval it)")


def check_targets(ep, path: str, member: str) -> None:
    """Every call in the deserialized graph (and its subgraphs) is a torch op, a
    higher-order op or an ``operator`` / ``math`` / ``torch.sym_*`` builtin."""
    import inspect

    import torch

    sym = {getattr(torch, n) for n in dir(torch) if re.fullmatch(r"_?sym_\w+", n)}
    for gm in ep.graph_module.modules():
        graph = getattr(gm, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op in ("call_module", "call_method"):
                raise refuse(path, member, f"graph node {node.name} is a {node.op}")
            if node.op != "call_function":
                continue
            t = node.target
            if isinstance(t, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
                continue
            if any(t is f for f in sym):
                continue
            if inspect.isbuiltin(t) and getattr(t, "__module__", None) in ("_operator", "math"):
                continue
            raise refuse(path, member, f"graph node {node.name} calls {t!r}, which is not a torch op")
