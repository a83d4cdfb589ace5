"""Hand-edited tuning logs (issue 11, "Workers").

An implausible tuning-log record (0 cycles, below the layer's lower bound, a schedule that
is not legal for the layer) is an error naming the file, the line and the layer, for
``compile --tuning-log`` and for resuming ``tune``.  (The module fixture ``tiny`` is in
tests/security/conftest.py.)
"""

from __future__ import annotations

import json

import pytest
from tests.cli_helpers import cli, error_line

from compiler.build import build_program
from compiler.tune import tune_model
from target_dlac.tune import tuning_log
from target_dlac.isa.machine import Machine

distributed = pytest.importorskip("distributed")


M = Machine()


# ------------------------------------------------------------------ implausible records

@pytest.fixture
def tuned_log(tiny, tmp_path):
    """A genuine log of the tiny net's 4 layers (lines 1-4: conv1, conv2, conv3, fc)."""
    log = tmp_path / "log.jsonl"
    tune_model(tiny, M, log, strategy="random", trials=10, jobs=1)
    recs = tuning_log.load(log)
    assert [r["layer"] for r in recs] == ["conv1", "conv2", "conv3", "fc"]
    assert build_program(tiny, M, tuning_log=log, reference=False).meta["tuning"]["tuned_layers"] == 4
    return log


def _edit(log, line: int, **changes) -> None:
    lines = log.read_text().splitlines()
    rec = json.loads(lines[line - 1])
    for k, v in changes.items():
        if v is None:
            rec.pop(k, None)
        else:
            rec[k] = v
    lines[line - 1] = json.dumps(rec)
    log.write_text("\n".join(lines) + "\n")


def _forge(log, like: int, **changes) -> int:
    """Append a copy of line ``like`` with ``changes``; its line number."""
    rec = json.loads(log.read_text().splitlines()[like - 1])
    rec.update(changes)
    rec = {k: v for k, v in rec.items() if v is not None}
    tuning_log.append(log, rec)
    return len(log.read_text().splitlines())


def test_zero_cycles_record_is_an_error(tiny, tuned_log, tmp_path, tiny_factory):
    _edit(tuned_log, 2, cycles=0)
    where = rf"tuning log '{tuned_log}', line 2 \(layer conv2\): implausible record: it claims 0 cycles"
    with pytest.raises(tuning_log.TuningLogError, match=where):
        build_program(tiny, M, tuning_log=tuned_log, reference=False)
    text = tuned_log.read_text()
    with pytest.raises(tuning_log.TuningLogError, match=where):           # resuming tune
        tune_model(tiny, M, tuned_log, strategy="random", trials=10, jobs=1)
    assert tuned_log.read_text() == text
    out = tmp_path / "out.dlac"
    line = error_line(cli(["compile", tiny_factory, "-o", out, "--tuning-log", tuned_log]), exit_code=1)
    assert "line 2 (layer conv2)" in line and str(tuned_log) in line and "0 cycles" in line, line
    assert not out.exists()


def test_forged_record_below_the_lower_bound_is_an_error(tiny, tuned_log):
    # a record for conv3 claiming 1 cycle (and no lower bound of its own): it would be the
    # best of its key, so its schedule would replace the tuned one
    n = _forge(tuned_log, 3, cycles=1, lower_bound=None)
    assert n == 5
    tuning_log.check_records(tuning_log.load(tuned_log))     # plausible on its own ...
    where = r"line 5 \(layer conv3\): implausible record: it claims 1 cycles, below the layer's lower bound"
    with pytest.raises(tuning_log.TuningLogError, match=where):    # ... not for its layer
        build_program(tiny, M, tuning_log=tuned_log, reference=False)
    with pytest.raises(tuning_log.TuningLogError, match=where):
        tune_model(tiny, M, tuned_log, strategy="random", trials=10, jobs=1)


def test_record_with_an_illegal_schedule_is_an_error(tiny, tuned_log):
    rec = json.loads(tuned_log.read_text().splitlines()[0])
    _forge(tuned_log, 1, cycles=rec["cycles"] - 1, lower_bound=None,
           schedule=dict(rec["schedule"], f_tile=4096, h_tile=4096))
    with pytest.raises(tuning_log.TuningLogError,
                       match=r"line 5 \(layer conv1\): implausible record: its schedule .* is malformed: "
                             r"f_tile=4096 is outside"):
        build_program(tiny, M, tuning_log=tuned_log, reference=False)


@pytest.mark.parametrize("changes,why", [
    ({"trials": 0}, "it claims 0 trials"),
    ({"default_cycles": 3}, r"it claims [\d,]+ cycles, more than its default schedule's 3 "),
    ({"lower_bound": 10 ** 9}, r"it claims [\d,]+ cycles, below its own lower bound of 1,000,000,000"),
    ({"lower_bound": -1}, "its lower_bound -1 is not a non-negative integer"),
])
def test_records_implausible_on_their_own(tuned_log, changes, why):
    _edit(tuned_log, 4, **changes)
    with pytest.raises(tuning_log.TuningLogError, match=rf"line 4 \(layer fc\): implausible record: {why}"):
        from compiler.build import check_tuning_log
        check_tuning_log(tuned_log, "fp32")


def test_plausible_records_still_apply(tiny, tuned_log):
    """A record at or above the layer's bound with a legal schedule applies: the checks
    refuse only what cannot be true."""
    rec = tuning_log.load(tuned_log)[1]
    assert _forge(tuned_log, 2, cycles=max(rec["lower_bound"], rec["cycles"] - 1)) == 5
    prog = build_program(tiny, M, tuning_log=tuned_log, reference=False)
    assert prog.meta["tuning"]["tuned_layers"] == 4
