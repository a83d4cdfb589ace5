"""The labelled datasets of ``dlac eval`` (:mod:`compiler.cli_eval`), checked against the binary.

* ``mnist``: the bundled MNIST test set (:func:`compiler.datasets.mnist_test`), already
  normalized as the bundled CNN was trained (``(x / 255 - 0.1307) / 0.3081``); it takes no
  preprocessing options.
* ``FILE.npz``: members ``x`` (the inputs, numeric) and ``y`` (integer class labels),
  read with ``np.load(allow_pickle=False)`` (an object array is refused, never unpickled).
  Preprocessing, in this order: ``x * scale`` (``--scale S``), then ``(x - mean) / std``
  (``--mean M --std S``: a scalar, or a comma list with one value per channel, the
  channel being axis 1 of the binary's input tensor, as in NCHW).

Checks (each a one-line :class:`DataError` / :class:`ConfigError` naming what is wrong):
the binary has one input and one output whose dims but the last are 1 (the classes); a
member is missing (named, with the members present); ``x``'s per-item shape is the input
tensor's (its leading batch dim 1 may be absent from ``x``); ``len(x) == len(y)``; labels
are integers in ``[0, classes)``; ``x`` is finite (before and after preprocessing).
Contract: :func:`load_dataset` returns a :class:`Dataset` whose ``x`` is
``(N,) + the input tensor's shape`` in the tensor's dtype and ``y`` int64 ``(N,)``.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from target_dlac.core.errors import ConfigError, DataError


@dataclass
class Dataset:
    """``x``: ``(N,) + input shape``; ``y``: int64 labels; ``source``: ``mnist`` or the
    file's path; ``sha256``: of the file (None for mnist); ``preprocessing``: what was applied."""
    x: np.ndarray
    y: np.ndarray
    source: str
    classes: int
    sha256: str | None = None
    preprocessing: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)


def binary_io(program) -> tuple:
    """``(input tensor, output tensor, classes)`` of a classifier binary: exactly one input
    and one output, one row of class scores: every dim of the output 1 but one, the classes
    (``(1, 1000)``, or ``(1, 1000, 1, 1)`` as SqueezeNet ends)."""
    ins, outs = list(program.inputs), list(program.outputs)
    if len(ins) != 1 or len(outs) != 1:
        raise ConfigError(f"dlac eval needs a binary with one input and one output; this one has "
                          f"{len(ins)} input(s) and {len(outs)} output(s)")
    t_in, t_out = ins[0], outs[0]
    shape = tuple(int(d) for d in t_out.shape)
    wide = [d for d in shape if d != 1]
    if not shape or len(wide) > 1 or min(shape) < 1:
        raise ConfigError(f"output {t_out.name!r} has shape {shape}: dlac eval needs one row of class "
                          "scores (every dim 1 but the classes')")
    return t_in, t_out, (wide or [1])[0]


def _floats(spec, what: str) -> list[float]:
    if isinstance(spec, (int, float)):
        vals = [float(spec)]
    else:
        try:
            vals = [float(s) for s in str(spec).split(",")]
        except ValueError:
            raise ConfigError(f"{what} {spec!r}: expected a number or a comma list of numbers") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise ConfigError(f"{what} {spec!r}: expected finite numbers")
    return vals


def parse_preprocessing(scale=None, mean=None, std=None) -> dict:
    """The preprocessing options as ``{"scale": float|None, "mean": [..]|None, "std": [..]|None}``."""
    if (mean is None) != (std is None):
        raise ConfigError("--mean and --std go together: give both (use --std 1 or --mean 0 for one alone)")
    pre = {"scale": None, "mean": None, "std": None}
    if scale is not None:
        vals = _floats(scale, "--scale")
        if len(vals) != 1:
            raise ConfigError(f"--scale {scale!r}: expected one number")
        pre["scale"] = vals[0]
    if mean is not None:
        pre["mean"], pre["std"] = _floats(mean, "--mean"), _floats(std, "--std")
        if any(s == 0 for s in pre["std"]):
            raise ConfigError(f"--std {std!r}: a standard deviation of 0")
    return pre


def _per_channel(vals: list[float], channels: int | None, what: str, shape: tuple) -> np.ndarray:
    if len(vals) == 1:
        return np.float64(vals[0])
    if channels is None or len(vals) != channels:
        raise ConfigError(f"{what}: {len(vals)} values, but the binary's input {shape} has "
                          f"{channels if channels is not None else 'no'} channels (axis 1)")
    view = [1] * (len(shape) + 1)
    view[2] = channels                  # x is (N,) + shape: the channel axis is 2
    return np.asarray(vals, np.float64).reshape(view)


def apply_preprocessing(x: np.ndarray, pre: dict, shape: tuple) -> np.ndarray:
    """``x`` (``(N,) + shape``) scaled and normalized per ``pre``, as float64."""
    out = x.astype(np.float64)
    if pre.get("scale") is not None:
        out = out * pre["scale"]
    if pre.get("mean") is not None:
        channels = shape[1] if len(shape) >= 2 else None
        out = (out - _per_channel(pre["mean"], channels, "--mean", shape)) / \
            _per_channel(pre["std"], channels, "--std", shape)
    return out


def fit_inputs(x: np.ndarray, t_in, where: str) -> np.ndarray:
    """``x`` reshaped to ``(N,) + the tensor's shape``: its items must have the tensor's
    shape, or the tensor's shape without its leading 1 (the binary's batch dim)."""
    want = tuple(int(d) for d in t_in.shape)
    item = tuple(x.shape[1:]) if x.ndim else ()
    if x.ndim == 0:
        raise DataError(f"x is a scalar; expected {len(want)}-dim items of shape {want}", where=where)
    if item == want or (want and want[0] == 1 and item == want[1:]):
        return x.reshape((len(x),) + want)
    fits = [want[1:], want] if want and want[0] == 1 else [want]
    should = " or ".join("(N, " + ", ".join(map(str, w)) + ")" for w in fits)
    raise DataError(f"x has shape {tuple(x.shape)}: items of shape {item}, but the binary's input "
                    f"{t_in.name!r} is {want} (x should be {should})", where=where)


def check_labels(y: np.ndarray, n: int, classes: int, where: str) -> np.ndarray:
    """``y`` as int64 after checking: 1-D, ``n`` of them, integers in ``[0, classes)``."""
    if y.dtype.kind not in "iu":
        raise DataError(f"labels y have dtype {y.dtype}; expected integer class indices in "
                        f"[0, {classes})", where=where)
    if y.ndim != 1:
        raise DataError(f"labels y have shape {tuple(y.shape)}; expected one label per item (N,)", where=where)
    if len(y) != n:
        raise DataError(f"len(x) = {n} but len(y) = {len(y)}: one label per input", where=where)
    if len(y):
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= classes:
            bad = int(np.flatnonzero((y < 0) | (y >= classes))[0])
            raise DataError(f"label y[{bad}] = {int(y[bad])} is out of range [0, {classes}) (the binary's "
                            f"output has {classes} classes; labels span {lo}..{hi})", where=where)
    return y.astype(np.int64)


def check_finite(x: np.ndarray, where: str, what: str = "x") -> None:
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise DataError(f"{what} has {int((~finite).sum()):,} non-finite value(s) (NaN/Inf), the first at "
                        f"item {int(bad[0])} index {tuple(int(i) for i in bad[1:])}", where=where)


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray, str]:
    if not os.path.isfile(path):
        raise DataError("no such file (give --data mnist or an .npz with x and y)", where=path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"not a readable .npz: {str(e)[:200]}", where=path) from None
    if not hasattr(z, "files"):
        raise DataError("is a single .npy array; expected an .npz with members x and y", where=path)
    with z:
        keys = sorted(z.files)
        arrays = {}
        for k in ("x", "y"):
            if k not in keys:
                raise DataError(f"missing key {k!r}; the file has {keys or 'no members'} (an .npz with x: inputs, "
                                "y: integer labels)", where=path)
            try:
                arrays[k] = z[k]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
                why = "an object array (pickled data is not loaded)" if "allow_pickle" in str(e) \
                    else str(e)[:200]
                raise DataError(f"member {k!r} cannot be read: {why}", where=path) from None
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise DataError(f"member {k!r} has dtype {a.dtype}; expected numbers", where=path)
    return arrays["x"], arrays["y"], digest


def load_dataset(spec: str, program, limit: int | None = None, scale=None, mean=None, std=None) -> Dataset:
    """The dataset ``spec`` (``mnist`` or ``FILE.npz``) fitted to ``program``'s input, its
    first ``limit`` items (all if None); see the module docstring for the checks."""
    t_in, _, classes = binary_io(program)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: expected a positive number of images")
    pre = parse_preprocessing(scale, mean, std)
    given = {k: v for k, v in pre.items() if v is not None}
    if spec == "mnist":
        if given:
            raise ConfigError(f"--data mnist is already normalized for the bundled CNN "
                              f"((x / 255 - 0.1307) / 0.3081); it takes no {', '.join('--' + k for k in given)}")
        from compiler.datasets import mnist_test

        x, y = mnist_test(limit)
        where, digest = "mnist", None
        applied = {"normalization": "(x / 255 - 0.1307) / 0.3081 (the bundled MNIST CNN's)"}
    else:
        if not spec.endswith(".npz"):
            raise ConfigError(f"--data {spec!r}: expected 'mnist' or a FILE.npz with x and y")
        x, y, digest = _read_npz(spec)
        where = spec
        if x.ndim and y.ndim == 1 and len(x) != len(y):
            raise DataError(f"len(x) = {len(x)} but len(y) = {len(y)}: one label per input", where=where)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        applied = {k: v for k, v in pre.items()}
    x = fit_inputs(np.asarray(x), t_in, where)
    y = check_labels(np.asarray(y), len(x), classes, where)
    if len(y) == 0:
        raise DataError("the dataset is empty", where=where)
    if x.dtype.kind == "f":
        check_finite(x, where)
    if given:
        x = apply_preprocessing(x, pre, tuple(int(d) for d in t_in.shape))
        check_finite(x, where, "x after preprocessing")
    dtype = np.dtype(t_in.dtype)
    if dtype.kind != "f" and x.dtype.kind == "f":
        raise DataError(f"x is {x.dtype} but the binary's input {t_in.name!r} is {dtype}: give integer "
                        "inputs (no rounding is done)", where=where)
    if dtype.kind == "f" and x.dtype != dtype:
        x = x.astype(dtype)
        check_finite(x, where, f"x as {dtype}")
    return Dataset(np.ascontiguousarray(x, dtype=dtype), y, where, classes, digest, applied)
