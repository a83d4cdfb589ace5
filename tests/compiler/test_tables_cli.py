"""``dlac tune`` and ``dlac train`` with ``--format csv|json`` (docs/formats.md): stdout is
the table alone, its values those of the tuning log's records / the training log's
``history``, and the progress lines go to stderr."""

from __future__ import annotations

import json

import numpy as np

from target_dlac.tune import tuning_log
from tests.cli_helpers import cli, ok
from tests.compiler.test_tables import assert_rows_equal, rows_of

TUNE_COLS = ["layer", "op", "precision", "status", "default_cycles", "tuned_cycles", "speedup", "trials",
             "lower_bound", "pct_of_bound", "note"] + \
    [f"schedule.{k}" for k in ("f_tile", "c_tile", "h_tile", "w_tile", "order", "double_buffer", "pe_order",
                               "pxshift")]


def test_tune_csv_rows_are_the_log_records_then_json_from_the_log(tmp_path, tiny_factory):
    log = tmp_path / "log.jsonl"
    args = ["tune", tiny_factory, "-o", log, "--trials", "12", "--jobs", "1", "--strategy", "random"]
    res = ok(cli([*args, "--format", "csv"]))
    cols, rows = rows_of(res.stdout)
    assert cols == TUNE_COLS
    recs = {r["layer"]: r for r in tuning_log.load(log)}
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "conv3", "fc"] and set(recs) == {"conv1", "conv2",
                                                                                              "conv3", "fc"}
    want = []
    for r in rows:
        rec = recs[r["layer"]]
        d, t, b = rec["default_cycles"], rec["cycles"], rec["lower_bound"]
        want.append({"layer": rec["layer"], "status": "tuned", "default_cycles": d, "tuned_cycles": t,
                     "speedup": d / t, "trials": rec["trials"], "lower_bound": b, "pct_of_bound": 100 * t / b,
                     "schedule": rec["schedule"], "op": r["op"], "precision": r["precision"], "note": r["note"]})
    assert_rows_equal(cols, rows, want)
    assert all(r["note"].startswith("stopped: ") for r in rows)
    assert "layer(s) tuned" in res.stderr and "[####" in res.stderr
    assert len(res.stdout.splitlines()) == 1 + len(rows)
    # again: every layer from the log; the JSON rows hold the same values
    res = ok(cli([*args, "--format", "json"]))
    js = json.loads(res.stdout)
    assert [r["status"] for r in js] == ["from log"] * 4
    for r, w in zip(js, want):
        assert {k: r[k] for k in ("default_cycles", "tuned_cycles", "speedup", "lower_bound", "pct_of_bound",
                                  "schedule", "trials")} == \
            {k: w[k] for k in ("default_cycles", "tuned_cycles", "speedup", "lower_bound", "pct_of_bound",
                               "schedule", "trials")}
    # the default output keeps its text table
    text = ok(cli(args)).stdout
    assert "speedup" in text and "from log" in text and not text.startswith("layer,")


def test_train_csv_rows_are_the_history(tmp_path, tiny_factory):
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.standard_normal((40, 1, 16, 16)).astype(np.float32),
             y=rng.integers(0, 10, 40).astype(np.int64))
    res = ok(cli(["train", tiny_factory, "--data", data, "-o", tmp_path / "m.pt2", "--val-size", "8",
                  "--batch-size", "16", "--calib-size", "16", "--epochs", "2", "--format", "csv"]))
    history = json.loads((tmp_path / "m.json").read_text())["history"]
    cols, rows = rows_of(res.stdout)
    assert cols == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "lr_next",
                    "train_seconds", "seconds"]
    assert len(history) == 2
    assert_rows_equal(cols, rows, history)
    assert "epoch 2/2:" in res.stderr and "compile it with" in res.stderr and "epoch 2/2" not in res.stdout
