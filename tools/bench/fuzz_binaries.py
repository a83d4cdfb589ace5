#!/usr/bin/env python
"""Fuzz the .dlac reader, decoder, validator, interpreter and HOST / REF graph loader with N
mutated binaries, each batch in its own subprocess so that a native crash is counted, not fatal.

Seeds: the small hand-written programs of tests/fuzz_seeds.py, (unless --no-mnist) the MNIST
CNN binary, and (unless --no-graphs) a small net with host ops and a REF graph in fp32 and
int8 (tests/fuzz_seeds.host_blob).  Each input is one mutation (tests/fuzz_helpers.mutate:
raw bit flips / byte overwrites / truncation / junk / splices, a "smart" change of an
instruction field, opcode, constant or JSON value with every CRC and the machine hash
recomputed, or, for a --graph-share of the inputs, a structure-aware change of the HOST /
REF graph: ops, operands, attributes, node and function order, shapes, constant bytes).
Each input is loaded with from_bytes and, if it loads, run with inputs of the declared shapes
and dtypes, with its host ops (built with TVM) and then its REF graph (built and run).

Outcomes: ``ran-ok``, ``load:`` / ``host:`` / ``run:`` / ``ref:<DlacError subclass>``,
``UNCAUGHT:<exception type>`` for anything else (including ``Hang``: an input over the
--timeout per-input bound), ``NATIVE-CRASH:<signal>`` when the batch's process died (the
batch then resumes after that input) and ``NATIVE-HANG`` when it stopped answering.  The
first few examples of each bad outcome are kept with the mutation, the traceback and (if
small) the bytes in hex.  Deterministic for a given --seed (each input has its own RNG).

    python tools/bench/fuzz_binaries.py [--n 100000] [--seed 0] [--workers 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CHUNK = 2000
KEEP_EXAMPLES = 3
MAX_HEX_BYTES = 8192


def _rng(seed: int, index: int) -> random.Random:
    return random.Random(seed * 1_000_003 + index)


def child(seed_dir: str, start: int, stop: int, args: dict) -> None:
    """Run inputs [start, stop); one JSON line on stdout before and after each input."""
    from tests.fuzz_helpers import exercise, mutate, time_limit

    warnings.simplefilter("ignore")          # NumPy overflow warnings of garbage data
    blobs = [open(os.path.join(seed_dir, f), "rb").read() for f in sorted(os.listdir(seed_dir))]
    cache: dict = {}
    out = sys.stdout
    for i in range(start, stop):
        rng = _rng(args["seed"], i)
        data, desc = mutate(rng, blobs, args["smart_share"], args["graph_share"])
        print(json.dumps({"start": i, "mutation": desc[:300], "bytes": len(data)}), file=out, flush=True)
        rec = {"i": i}
        try:
            with time_limit(args["timeout"]):
                rec["o"] = exercise(data, seed=i, cache=cache)
        except Exception as e:           # noqa: BLE001 - that is what we are counting
            rec["o"] = "UNCAUGHT:" + type(e).__name__
            rec.update(where=_where(e), traceback=traceback.format_exc()[-3000:],
                       hex=data.hex() if len(data) <= MAX_HEX_BYTES else None)
        print(json.dumps(rec), file=out, flush=True)


class _Batch:
    """Inputs [start, stop) in subprocesses: a process that dies or stops answering has its
    in-flight input counted and the batch goes on after it in a new process."""

    def __init__(self, seed_dir, start, stop, args):
        self.seed_dir, self.next, self.stop, self.args = seed_dir, start, stop, args
        self.counts = collections.Counter()
        self.examples: dict[str, list] = {}

    def _keep(self, outcome, ex):
        lst = self.examples.setdefault(outcome, [])
        if len(lst) < KEEP_EXAMPLES:
            lst.append(ex)

    def run(self) -> "_Batch":
        while self.next < self.stop:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", self.seed_dir, str(self.next),
                   str(self.stop), json.dumps(self.args)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
                                    env=dict(os.environ, PYTHONPATH=ROOT), start_new_session=True)
            inflight, buf = None, b""
            hung = False
            while True:
                ready, _, _ = select.select([proc.stdout], [], [], self.args["timeout"] * 3 + 60)
                if not ready:                         # no word for far longer than an input may take
                    hung = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    rec = json.loads(line)
                    if "start" in rec:
                        inflight = rec
                        continue
                    self.counts[rec["o"]] += 1
                    if rec["o"].startswith("UNCAUGHT"):
                        self._keep(rec["o"], {"input": rec["i"], "mutation": inflight["mutation"],
                                              "bytes": inflight["bytes"], "hex": rec.get("hex"),
                                              "where": rec["where"], "traceback": rec["traceback"]})
                    inflight = None
                    self.next = rec["i"] + 1
            rc = proc.wait()
            if inflight is not None:                  # the process died (or hung) inside an input
                outcome = "NATIVE-HANG" if hung else f"NATIVE-CRASH:{_signame(rc)}"
                self.counts[outcome] += 1
                self._keep(outcome, {"input": inflight["start"], "mutation": inflight["mutation"],
                                     "bytes": inflight["bytes"], "returncode": rc})
                self.next = inflight["start"] + 1
            elif rc != 0 and self.next < self.stop:    # died between inputs (startup): do not loop
                self.counts[f"BATCH-FAILED:{_signame(rc)}"] += self.stop - self.next
                self.next = self.stop
        return self


def _signame(rc: int) -> str:
    if rc < 0:
        try:
            return signal.Signals(-rc).name
        except ValueError:
            return str(rc)
    return f"exit {rc}"


def _where(e: BaseException) -> str:
    """file:line of the innermost frame inside the project (not NumPy, not json)."""
    frames = traceback.extract_tb(e.__traceback__)
    inside = [f for f in frames if f.filename.startswith(ROOT) and "fuzz_binaries" not in f.filename]
    f = (inside or frames)[-1]
    return f"{os.path.relpath(f.filename, ROOT)}:{f.lineno} ({f.name})"


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="number of mutated inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per input before it counts as a hang")
    ap.add_argument("--smart-share", type=float, default=0.5,
                    help="share of CRC-fixing (deep) mutations among the rest; the others are raw byte mutations")
    ap.add_argument("--graph-share", type=float, default=0.2,
                    help="share of structure-aware HOST / REF graph mutations")
    ap.add_argument("--no-mnist", action="store_true", help="no MNIST seed (no torch compile)")
    ap.add_argument("--no-graphs", action="store_true", help="no HOST / REF seeds and no graph mutations")
    ap.add_argument("--json", metavar="FILE", help="write the counts and examples to FILE as JSON")
    ap.add_argument("--replay", type=int, nargs="+", metavar="INPUT",
                    help="run just these inputs (same --seed and seed options) in this process, "
                         "printing each outcome and traceback")
    args = ap.parse_args(argv)

    from tests.fuzz_seeds import host_blob, mnist_blob, small_blobs

    t0 = time.perf_counter()
    seeds = small_blobs()
    if not args.no_mnist:
        seeds["mnist"] = mnist_blob()
    if not args.no_graphs:
        seeds["host_fp32"] = host_blob("fp32")
        seeds["host_int8"] = host_blob("int8")
    t_seeds = time.perf_counter() - t0
    print(f"seeds: {', '.join(f'{k} ({len(v):,} B)' for k, v in seeds.items())}  [{t_seeds:.1f} s]")

    wargs = {"seed": args.seed, "timeout": args.timeout, "smart_share": args.smart_share,
             "graph_share": 0.0 if args.no_graphs else args.graph_share}
    if args.replay:
        from tests.fuzz_helpers import exercise, mutate

        blobs = list(seeds.values())
        for i in args.replay:
            data, desc = mutate(_rng(args.seed, i), blobs, wargs["smart_share"], wargs["graph_share"])
            try:
                outcome = exercise(data, seed=i)
            except Exception:  # noqa: BLE001 - shown, not counted
                outcome = "UNCAUGHT\n" + traceback.format_exc()
            print(f"input {i}: {desc}\n  -> {outcome}")
        return 0
    counts: collections.Counter = collections.Counter()
    examples: dict[str, list] = {}
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlac-fuzz-") as seed_dir:
        for i, (k, v) in enumerate(seeds.items()):
            with open(os.path.join(seed_dir, f"{i:02d}_{k}.dlac"), "wb") as f:
                f.write(v)
        batches = [_Batch(seed_dir, a, min(a + CHUNK, args.n), wargs) for a in range(0, args.n, CHUNK)]
        lock, done = threading.Lock(), [0]
        todo = list(batches)

        def worker():
            while True:
                with lock:
                    if not todo:
                        return
                    b = todo.pop(0)
                b.run()
                with lock:
                    done[0] += sum(b.counts.values())
                    el = time.perf_counter() - t1
                    print(f"  {done[0]:,} / {args.n:,} inputs, {el:.0f} s", file=sys.stderr, flush=True)
        threads = [threading.Thread(target=worker) for _ in range(max(1, args.workers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for b in batches:                          # in input order: deterministic examples
        counts.update(b.counts)
        for k, v in b.examples.items():
            examples.setdefault(k, []).extend(v)
    wall = time.perf_counter() - t1
    examples = {k: v[:KEEP_EXAMPLES] for k, v in examples.items()}

    total = sum(counts.values())
    print(f"\n{total:,} inputs in {wall:.1f} s with {args.workers} worker(s): {total / wall:,.0f} inputs/s "
          f"(seed {args.seed}, smart share {args.smart_share}, graph share {wargs['graph_share']})\n")
    width = max(len(k) for k in counts)
    bad = ("UNCAUGHT", "NATIVE", "BATCH")
    for k in sorted(counts, key=lambda k: (k.startswith(bad), k)):
        print(f"  {k:<{width}}  {counts[k]:>8,}  {100 * counts[k] / total:6.2f} %")
    escaped = {k: v for k, v in counts.items() if k.startswith(bad)}
    if escaped:
        print(f"\n{sum(escaped.values()):,} input(s) escaped (non-DlacError, native crash or hang):")
        for k, exs in examples.items():
            print(f"\n== {k} ({counts[k]:,})")
            for e in exs:
                print(f"  input {e['input']}: {e['mutation']}")
                if "where" in e:
                    print(f"    at {e['where']}\n    " + e["traceback"].strip().splitlines()[-1])
    else:
        print("\nno uncaught exceptions, no native crashes, no hangs")

    if args.json:
        from target_dlac.core.atomic import atomic_write_text

        doc = {"argv": sys.argv, "n": total, "seed": args.seed, "workers": args.workers,
               "timeout_s": args.timeout, "smart_share": args.smart_share,
               "graph_share": wargs["graph_share"],
               "seeds": {k: len(v) for k, v in seeds.items()}, "seed_build_s": t_seeds,
               "wall_s": wall, "inputs_per_s": total / wall, "counts": dict(sorted(counts.items())),
               "examples": examples, "python": platform.python_version(),
               "machine": platform.machine()}
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 1 if escaped else 0


if __name__ == "__main__":
    sys.exit(main())
