#!/usr/bin/env python
"""Fuzz the .dlac reader, decoder, validator and interpreter with N mutated binaries.

Seeds: the small hand-written programs of tests/fuzz_seeds.py and (unless --no-mnist)
the MNIST CNN binary.  Each input is one mutation (tests/fuzz_helpers.mutate: raw bit
flips / byte overwrites / truncation / junk / splices, or a "smart" change of an
instruction field, opcode, constant, or JSON value with every CRC and the machine hash
recomputed so it reaches decode, validation and the interpreter).  Each input is loaded
with from_bytes and, if it loads, run with inputs of the declared shapes and dtypes.

Outcomes: ``ran-ok``, ``load:<DlacError subclass>``, ``run:<DlacError subclass>``, and
``UNCAUGHT:<exception type>`` for anything else (including ``Hang``: an input over the
--timeout per-input bound).  The first few examples of each uncaught type are kept with
the mutation, the traceback and (if small) the bytes in hex.  Deterministic for a given
--seed and --workers.

    python tools/bench/fuzz_binaries.py [--n 100000] [--seed 0] [--workers 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import platform
import random
import sys
import time
import traceback
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CHUNK = 500
KEEP_EXAMPLES = 3
MAX_HEX_BYTES = 8192

_BLOBS: list[bytes] = []
_ARGS: dict = {}


def _init(blobs, args):
    global _BLOBS, _ARGS
    _BLOBS, _ARGS = blobs, args
    warnings.simplefilter("ignore")          # NumPy overflow warnings of garbage data


def _chunk(index: int):
    """Run inputs [index * CHUNK, (index + 1) * CHUNK) of the stream; deterministic per index."""
    from tests.fuzz_helpers import exercise, mutate, time_limit

    rng = random.Random(_ARGS["seed"] * 1_000_003 + index)
    counts = collections.Counter()
    examples: dict[str, list] = {}
    n = min(CHUNK, _ARGS["n"] - index * CHUNK)
    for i in range(n):
        data, desc = mutate(rng, _BLOBS, _ARGS["smart_share"])
        try:
            with time_limit(_ARGS["timeout"]):
                outcome = exercise(data, seed=i)
        except Exception as e:           # noqa: BLE001 - that is what we are counting
            outcome = "UNCAUGHT:" + type(e).__name__
            ex = examples.setdefault(outcome, [])
            if len(ex) < KEEP_EXAMPLES:
                tb = traceback.format_exc()
                ex.append({"input": index * CHUNK + i, "mutation": desc, "bytes": len(data),
                           "hex": data.hex() if len(data) <= MAX_HEX_BYTES else None,
                           "where": _where(e), "traceback": tb[-3000:]})
        counts[outcome] += 1
    return counts, examples


def _where(e: BaseException) -> str:
    """file:line of the innermost frame inside the project (not NumPy, not json)."""
    frames = traceback.extract_tb(e.__traceback__)
    inside = [f for f in frames if f.filename.startswith(ROOT) and "fuzz_binaries" not in f.filename]
    f = (inside or frames)[-1]
    return f"{os.path.relpath(f.filename, ROOT)}:{f.lineno} ({f.name})"


def _progress(done: int, n: int, t1: float):
    if done % (20 * CHUNK) == 0 or done >= n:
        el = time.perf_counter() - t1
        print(f"  {min(done, n):,} / {n:,} inputs, {el:.0f} s", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="number of mutated inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per input before it counts as a hang")
    ap.add_argument("--smart-share", type=float, default=0.5,
                    help="share of CRC-fixing (deep) mutations; the rest are raw byte mutations")
    ap.add_argument("--no-mnist", action="store_true", help="small seeds only (no torch/TVM compile)")
    ap.add_argument("--json", metavar="FILE", help="write the counts and examples to FILE as JSON")
    args = ap.parse_args(argv)

    from tests.fuzz_seeds import mnist_blob, small_blobs

    t0 = time.perf_counter()
    seeds = small_blobs()
    if not args.no_mnist:
        seeds["mnist"] = mnist_blob()
    t_seeds = time.perf_counter() - t0
    print(f"seeds: {', '.join(f'{k} ({len(v):,} B)' for k, v in seeds.items())}  [{t_seeds:.1f} s]")

    wargs = {"n": args.n, "seed": args.seed, "timeout": args.timeout, "smart_share": args.smart_share}
    chunks = range((args.n + CHUNK - 1) // CHUNK)
    counts: collections.Counter = collections.Counter()
    examples: dict[str, list] = {}
    t1 = time.perf_counter()
    blobs = list(seeds.values())
    if args.workers > 1:
        ctx = mp.get_context("fork")
        with ctx.Pool(args.workers, initializer=_init, initargs=(blobs, wargs)) as pool:
            results = pool.imap(_chunk, chunks)       # ordered: deterministic example order
            for done, (c, ex) in enumerate(results, 1):
                _progress(done * CHUNK, args.n, t1)
                counts.update(c)
                for k, v in ex.items():
                    examples.setdefault(k, []).extend(v)
    else:
        _init(blobs, wargs)
        for i in chunks:
            c, ex = _chunk(i)
            _progress((i + 1) * CHUNK, args.n, t1)
            counts.update(c)
            for k, v in ex.items():
                examples.setdefault(k, []).extend(v)
    wall = time.perf_counter() - t1
    examples = {k: v[:KEEP_EXAMPLES] for k, v in examples.items()}

    total = sum(counts.values())
    print(f"\n{total:,} inputs in {wall:.1f} s with {args.workers} worker(s): {total / wall:,.0f} inputs/s "
          f"(seed {args.seed}, smart share {args.smart_share})\n")
    width = max(len(k) for k in counts)
    for k in sorted(counts, key=lambda k: (k.startswith("UNCAUGHT"), k)):
        print(f"  {k:<{width}}  {counts[k]:>8,}  {100 * counts[k] / total:6.2f} %")
    uncaught = {k: v for k, v in counts.items() if k.startswith("UNCAUGHT")}
    if uncaught:
        print(f"\n{sum(uncaught.values()):,} input(s) escaped with a non-DlacError:")
        for k, exs in examples.items():
            print(f"\n== {k} ({counts[k]:,})")
            for e in exs:
                print(f"  input {e['input']}: {e['mutation']}\n    at {e['where']}")
                print("    " + e["traceback"].strip().splitlines()[-1])
    else:
        print("\nno uncaught exceptions, no hangs")

    if args.json:
        from compiler.atomic import atomic_write_text

        doc = {"argv": sys.argv, "n": total, "seed": args.seed, "workers": args.workers,
               "timeout_s": args.timeout, "smart_share": args.smart_share,
               "seeds": {k: len(v) for k, v in seeds.items()}, "seed_build_s": t_seeds,
               "wall_s": wall, "inputs_per_s": total / wall, "counts": dict(sorted(counts.items())),
               "uncaught_examples": examples, "python": platform.python_version(),
               "machine": platform.machine()}
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
