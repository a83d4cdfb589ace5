"""The tables the ``dlac`` commands print, as rows, and their CSV / JSON writers
(``--format table|csv|json``; the schema of every table is in docs/formats.md).

One design for every command that prints a table (``run``, ``inspect``, ``compile``,
``tune``, ``train``): ``--format table`` (the default) prints the text table as before;
``--format csv`` / ``--format json`` print the table's rows on stdout instead, and every
other line the command would print on stdout (notes, check results, progress) goes to
stderr (:func:`text_to_stderr`), so stdout loads as it is:
``pandas.read_csv(io.StringIO(out))`` / ``pandas.json_normalize(json.loads(out))`` give the
same columns.  ``--report-json`` files are not affected.

Rows (:class:`Table`): plain dicts, one per layer / instruction / epoch, the values those
of the command's JSON report where it has one (``run``: each row is
:meth:`target_dlac.sim.report.LayerReport.to_dict`, so new fields appear by themselves).

* JSON: a list of the row objects, nested dicts kept (``energy_pj``, ``schedule``),
  through :func:`compiler.cli_args.strict_json` (non-finite floats as ``"nan"`` /
  ``"inf"`` / ``"-inf"`` strings); text is not altered (JSON escapes it).
* CSV (RFC 4180, ``\\r\\n`` line ends as the ``csv`` module writes them): a header row, then
  one row per row object.  Nested dicts are flattened into ``key.sub`` columns (the names
  ``pandas.json_normalize`` gives); the columns are the union over the rows (and over the
  table's ``template``, which fixes columns that must appear even when no row has them) in
  first-appearance order of their top-level key.  Cells: ``None`` / missing -> empty; ``bool``
  -> ``True`` / ``False``; ``int`` -> decimal; ``float`` -> ``repr`` (round-trips exactly;
  ``nan``, ``inf``, ``-inf`` for non-finite values, which pandas reads as floats); a list or
  dict -> compact strict JSON text; text -> :func:`compiler.cli_args.printable` (control
  characters as ``\\x..`` escapes, one line) and, if it then starts with ``=``, ``+``, ``-``
  or ``@`` (a spreadsheet would take it as a formula: layer names come from the model or
  the binary), prefixed with a single quote ``'``.

Limits: a table is built in memory (an ``inspect`` listing of a ResNet-50 binary is a few
hundred thousand rows); the CSV of a text cell protected by ``'`` no longer equals the
JSON value (the docs say so)."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import sys
from dataclasses import dataclass, field

import click

FORMATS = ("table", "csv", "json")

#: the characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection")
FORMULA_START = ("=", "+", "-", "@")


def format_option(f):
    """The ``--format table|csv|json`` option (parameter ``fmt``) of a command with a table."""
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
        help="What goes to stdout: the text table, or its rows as CSV (header row, one row per "
             "item) or JSON (a list of row objects); with csv / json every other line goes to "
             "stderr. Columns: docs/formats.md.")(f)


@contextlib.contextmanager
def text_to_stderr(fmt: str):
    """With ``fmt`` csv / json, send what the block prints on stdout to stderr (click.echo
    and print resolve ``sys.stdout`` when called), keeping stdout for the table."""
    if fmt == "table":
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


@dataclass
class Table:
    """One table: ``rows`` (dicts), ``template`` (a dict whose keys, nested as in the rows,
    are columns every CSV of this table has, in this order, before any other)."""

    rows: list[dict]
    template: dict = field(default_factory=dict)

    def columns(self) -> list[str]:
        """The CSV header: flattened keys, as described in the module docstring."""
        tree: dict = {}
        for row in [self.template, *self.rows]:
            _merge(tree, row)
        return _leaves(tree, "")

    def csv(self) -> str:
        cols = self.columns()
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow([_text_cell(c) for c in cols])
        paths = [c.split(".") for c in cols]
        for row in self.rows:
            w.writerow([csv_cell(_get(row, p)) for p in paths])
        return buf.getvalue()

    def json(self) -> str:
        from compiler.cli_args import strict_json

        return strict_json(self.rows, indent=2)

    def emit(self, fmt: str) -> None:
        """Print the table on stdout as ``fmt`` (csv / json; table: nothing, the command
        printed its text table itself)."""
        if fmt == "csv":
            click.echo(self.csv(), nl=False)
        elif fmt == "json":
            click.echo(self.json())


def _merge(tree: dict, row: dict) -> None:
    for k, v in row.items():
        k = str(k)
        if isinstance(v, dict) and v:
            sub = tree.get(k)
            if not isinstance(sub, dict):
                tree[k] = sub = {}      # a leaf so far (None in an earlier row): now a group
            _merge(sub, v)
        else:
            tree.setdefault(k, None)


def _leaves(tree: dict, prefix: str) -> list[str]:
    out = []
    for k, sub in tree.items():
        name = prefix + k
        out.extend(_leaves(sub, name + ".") if isinstance(sub, dict) else [name])
    return out


def _get(row: dict, path: list[str]):
    v = row
    for k in path:
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return v


def _text_cell(text) -> str:
    from compiler.cli_args import printable

    s = printable(text)
    return "'" + s if s.startswith(FORMULA_START) else s


def csv_cell(v) -> str:
    """One CSV cell (see the module docstring)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if type(v).__module__ == "numpy" and getattr(v, "ndim", None) == 0:
        return csv_cell(v.item())
    if isinstance(v, (list, tuple, dict)):
        from compiler.cli_args import strict_json

        return strict_json(v, separators=(",", ":"))
    return _text_cell(v)


# ------------------------------------------------------------------ the commands' tables

def run_table(report) -> Table:
    """``dlac run``: one row per layer of the (first input's) run report,
    :meth:`LayerReport.to_dict` (the ``layers`` of ``--report-json``); the columns are the
    fields of :class:`LayerReport` in their order (``energy_pj`` as its five parts), then ``on``."""
    from target_dlac.isa.energy import PARTS
    from target_dlac.sim.report import LayerReport

    head = {f.name: None for f in dataclasses.fields(LayerReport)}
    if "energy_pj" in head:
        head["energy_pj"] = dict.fromkeys(("total",) + tuple(PARTS))
    return Table([l.to_dict() for l in report.layers], template=head | {"on": None})


#: the columns of an ``inspect`` instruction row before its fields
_INSN_HEAD = ("pc", "layer", "op", "unit", "pop_prev", "pop_next", "push_prev", "push_next", "text")


def inspect_insn_table(prog) -> Table:
    """``dlac inspect``: one row per instruction: its pc, the layer that holds it (the last
    in the layer table whose pc range does; ``None``: none), op, unit, dependency bits,
    the disassembly text and ``fields`` (every field of its format, as decoded)."""
    from target_dlac.binary.layer_meta import layer_table
    from target_dlac.isa.encoding import FORMATS, disassemble

    n = len(prog.insns)
    owner: list = [None] * n
    for l in layer_table(prog.meta):
        for pc in range(max(0, l.pc_start), min(n, l.pc_end)):
            owner[pc] = l.name
    rows = [{"pc": pc, "layer": owner[pc], "op": ins.op, "unit": ins.unit,
             "pop_prev": ins.pop_prev, "pop_next": ins.pop_next, "push_prev": ins.push_prev,
             "push_next": ins.push_next, "text": disassemble(ins), "fields": dict(ins.f)}
            for pc, ins in enumerate(prog.insns)]
    names = {}
    for _, _, fields in FORMATS.values():
        names.update((name, None) for name, _ in fields)
    return Table(rows, template=dict.fromkeys(_INSN_HEAD) | {"fields": names})


def inspect_layer_table(info: dict) -> Table:
    """``dlac inspect --summary``: one row per layer of :func:`describe`'s ``layers`` (the
    ``layers`` of ``inspect --json``)."""
    from target_dlac.codegen.schedule import Schedule

    sched = dict.fromkeys(f.name for f in dataclasses.fields(Schedule))
    return Table([dict(l) for l in info["layers"]],
                 template=dict.fromkeys(("name", "op", "precision", "pc_start", "pc_end"))
                 | {"schedule": sched, "min_dram_bytes": None})


def compile_table(report: dict) -> Table:
    """``dlac compile``: one row per conv / dense layer, the text table's columns: the
    ``layers`` entry of the compile report joined with its ``multiplies`` entry (by layer
    variable); a layer on the host replaces none of its multiplies (``replaced`` and
    ``accumulations`` 0, ``left`` = ``dense_macs``), as in the text table."""
    mult = {m["name"]: m for m in report["multiplies"]}
    rows = []
    for l in report["layers"]:
        m = mult.get(l["var"], {})
        dense = m.get("dense_macs", 0)
        host = l.get("on") == "host"
        rows.append(dict(l) | {"dense_macs": dense,
                               "replaced": 0 if host else m.get("replaced", 0),
                               "accumulations": 0 if host else m.get("accumulations", 0),
                               "left": dense if host else m.get("left", 0)})
    return Table(rows)


def tune_table(rows: list[dict]) -> Table:
    """``dlac tune``: one row per layer of :func:`compiler.tune.tune_model`'s result, with
    ``speedup`` (default / tuned cycles; 1.0 for 0 tuned cycles) and ``pct_of_bound`` (100 *
    tuned / lower bound), both ``None`` where not known, as the text table computes them."""
    from target_dlac.codegen.schedule import Schedule

    out = []
    for r in rows:
        d, t, b = r.get("default_cycles"), r.get("tuned_cycles"), r.get("lower_bound")
        row = dict(r)
        row["speedup"] = None if d is None or t is None else (d / t if t else 1.0)
        row["pct_of_bound"] = 100 * t / b if t is not None and b else None
        out.append(row)
    sched = dict.fromkeys(f.name for f in dataclasses.fields(Schedule))
    return Table(out, template=dict.fromkeys(("layer", "op", "precision", "status", "default_cycles",
                                              "tuned_cycles", "speedup", "trials", "lower_bound",
                                              "pct_of_bound", "note")) | {"schedule": sched})


def train_table(history: list[dict]) -> Table:
    """``dlac train``: one row per epoch of this run's history (the ``history`` of OUT.json)."""
    return Table([dict(h) for h in history],
                 template=dict.fromkeys(("epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                                         "lr", "lr_next", "train_seconds", "seconds")))
