"""Training checkpoints: written atomically at the end of every epoch, read back with
``torch.load(weights_only=True)`` only (tensors, numbers, strings, lists and dicts; no
unpickling of arbitrary objects).

A checkpoint holds the student's and the teacher's state dicts, the optimizer's and the
plateau scheduler's state, the epoch just finished, the history so far, the validation
figures before training, the :class:`~compiler.train.loop.TrainOptions` and the
caller's ``meta`` (the CLI's arguments).  Resuming checks that the options (other than
``epochs``) and ``meta`` are those of the checkpoint and that the state dicts fit the
model: a corrupt, foreign or mismatched checkpoint is a one-line :class:`DataError`
naming the file.
"""

from __future__ import annotations

import io
import os

from target_dlac.core.atomic import atomic_write_bytes
from target_dlac.core.errors import DataError

FORMAT = "dlac-train-checkpoint"
VERSION = 1
#: options that may change between an interrupted run and its resumption
_RESUMABLE = ("epochs", "threads")


def save_checkpoint(path, epoch, student, teacher, opt, sched, options, meta, history, initial) -> None:
    import torch

    state = {"format": FORMAT, "version": VERSION, "epoch": int(epoch),
             "model": student.state_dict(), "teacher": None if teacher is None else teacher.state_dict(),
             "optimizer": opt.state_dict(), "scheduler": _plain(sched.state_dict()),
             "options": _plain(options.to_dict()), "meta": _plain(meta or {}),
             "history": _plain(history), "initial": _plain(initial)}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _plain(obj):
    """Only the types ``weights_only=True`` loads: dict / list / str / int / float / bool /
    None (tuples become lists, other objects their ``str``) and tensors."""
    import torch

    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    return str(obj)


def load_checkpoint(path, student, teacher, opt, sched, options, meta) -> dict:
    """Restore the checkpoint at ``path`` into the given objects; returns its dict."""
    import torch

    label = f"checkpoint {path!r}"
    if not os.path.isfile(path):
        raise DataError(f"{label} not found (nothing to resume; run without --resume first)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:      # noqa: BLE001 - truncated zip, bad pickle, refused global, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"{label} is corrupt or not a dlac training checkpoint ({type(e).__name__}: "
                        f"{first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"{label} is not a dlac training checkpoint")
    if state.get("version") != VERSION:
        raise DataError(f"{label} has version {state.get('version')!r}; this dlac reads version {VERSION}")
    saved = state.get("options") or {}
    for k, v in _plain(options.to_dict()).items():
        if k not in _RESUMABLE and saved.get(k) != v:
            raise DataError(f"{label} was written with {k}={saved.get(k)!r}, this run has {k}={v!r} "
                            "(resume with the same arguments)")
    saved_meta, now = state.get("meta") or {}, _plain(meta or {})
    for k in sorted(set(saved_meta) | set(now)):
        if saved_meta.get(k) != now.get(k):
            raise DataError(f"{label} was written with {k}={saved_meta.get(k)!r}, this run has "
                            f"{k}={now.get(k)!r} (resume with the same arguments)")
    if (state.get("teacher") is None) != (teacher is None):
        raise DataError(f"{label}: teacher state {'missing' if teacher is not None else 'unexpected'}")
    try:
        student.load_state_dict(state["model"])
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"{label} does not fit this model: {first}") from None
    if not isinstance(state.get("epoch"), int) or not isinstance(state.get("history"), list):
        raise DataError(f"{label} lacks its epoch or history")
    return state
