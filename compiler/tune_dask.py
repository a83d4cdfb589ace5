"""``dlac tune --dask``: the layers' searches on a Dask distributed cluster.

Every worker first runs an import probe (shipped by value, so a worker without dlac can
report why); searches run only on workers that passed it.  Lost workers are replaced by
workers that join (probed first); a lost scheduler, no usable worker within the timeout,
or a failed task is one :class:`DlacError` line.  Used by :func:`compiler.tune.tune_model`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import time

from target_dlac.core.text import printable

from compiler import __version__
from target_dlac.core.errors import ConfigError, DlacError
from target_dlac.tune.layer_search import tune_layer

DASK_CONNECT_TIMEOUT = "10s"
#: seconds: for a first Dask worker, for a worker's import probe, and for a usable worker
#: once every one was lost (``tune_model(dask_timeout=...)`` overrides it)
DASK_WORKER_TIMEOUT = 60.0
DASK_POLL = 0.2             # seconds between looks at the Dask futures and workers
#: what a tuning task imports on a worker (the import probe imports them first)
PROBE_MODULES = ("target_dlac.tune.layer_search", "target_dlac.tune.costmodel", "target_dlac.tune.search",
                 "target_dlac.tune.space", "target_dlac.codegen.layer_weights", "target_dlac.isa.machine",
                 "target_dlac.codegen.schedule", "compiler.sweep")


def _import_probe(modules):
    """Runs on a Dask worker (shipped by value: it needs nothing of dlac to be
    deserialized): import what a tuning task needs; return the worker's dlac version."""
    import importlib

    for m in modules:
        importlib.import_module(m)
    return importlib.import_module("compiler").__version__


def _by_value(fn):
    """A copy of the plain function ``fn`` that pickles by value (its ``__module__`` names
    no importable module, so pickle falls back to cloudpickle, which then ships the code)."""
    import types

    f = types.FunctionType(fn.__code__, {"__builtins__": __builtins__}, fn.__name__, fn.__defaults__)
    f.__module__ = "dlac_worker_probe"
    f.__qualname__ = fn.__name__
    return f


@contextlib.contextmanager
def _quiet_dask_logs():
    """Silence the ``distributed`` and ``tornado`` loggers meanwhile (restored after): a
    lost scheduler or worker makes them log tracebacks, and the tuner reports the failure
    as one error line of its own."""
    import logging

    names = {"distributed", "tornado"} | {n for n in list(logging.root.manager.loggerDict)
                                           if n.split(".")[0] in ("distributed", "tornado")}
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


@dataclass(frozen=True)
class Wording:
    """How a run's errors name its work: ``item`` names ``names[k]`` (``"layer"``; empty:
    the name alone), ``task`` is what runs for it (``"search"``), ``progress`` says how far
    the run got (``{done}`` and ``{total}`` filled in) and ``none`` what to say when nothing
    finished (empty: nothing)."""
    item: str = "layer"
    task: str = "search"
    progress: str = "{done} of {total} layer(s) were tuned and logged; rerun to resume"
    none: str = "rerun to resume"


#: ``dlac tune``'s words (the default)
TUNE_WORDS = Wording()


def dask_results(address: str, calls: dict, names: dict, timeout: float, fn=tune_layer,
                 words: Wording = TUNE_WORDS):
    """Run ``fn(*calls[k])`` (default ``tune_layer``) for every ``k`` on the Dask cluster whose
    scheduler is at ``address`` (``tcp://host:port`` or ``host:port``); yield ``(k, outcome)``
    as each one finishes.  ``names[k]``: the item's name for errors, worded by ``words``.  Raises :class:`DlacError`
    (one line) when the scheduler cannot be reached or is lost, when no worker is there
    or none can import dlac within ``timeout`` s, when every usable worker is lost for
    ``timeout`` s, or when a task fails."""
    try:
        from distributed import Client      # first: importing it configures its loggers
    except ImportError:
        raise ConfigError("--dask needs the 'distributed' package: pip install 'distributed'") from None
    with _quiet_dask_logs():
        try:
            client = Client(address, timeout=DASK_CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as e:
            raise ConfigError(f"cannot reach the Dask scheduler at {address!r}: {e}") from None
        run = _DaskRun(client, address, timeout, names, fn, words)
        try:
            yield from run.results(calls)
        except (OSError, TimeoutError) as e:     # distributed's CommClosedError is an OSError
            raise DlacError(run.lost_scheduler(e)) from None
        finally:
            with contextlib.suppress(Exception):
                client.close(timeout=2)


class _DaskRun:
    """The state of one run on a Dask cluster: which workers passed the import probe
    (``good``: address -> dlac version), failed it (``bad``: address -> why), or are
    being probed (``probing``: address -> (future, start time))."""

    def __init__(self, client, address: str, timeout: float, names: dict, fn=tune_layer,
                 words: Wording = TUNE_WORDS):
        self.fn, self.words = fn, words
        self.client, self.address, self.timeout, self.names = client, address, timeout, names
        self.good: dict = {}
        self.bad: dict = {}
        self.probing: dict = {}
        self.done = 0
        self.total = 0
        self.probe = _by_value(_import_probe)

    # -- messages
    def _progress(self) -> str:
        """``"; "`` and how far the run got, or nothing (:class:`Wording`)."""
        w = self.words
        said = w.progress.format(done=self.done, total=self.total) if self.done else w.none
        return f"; {said}" if said else ""

    def _item(self, k) -> str:
        return f"{self.words.item} {self.names[k]}" if self.words.item else str(self.names[k])

    def lost_scheduler(self, e=None) -> str:
        why = f" ({type(e).__name__})" if e is not None else ""
        return f"lost the connection to the Dask scheduler at {self.address!r}{why}{self._progress()}"

    def _bad_summary(self) -> str:
        items = sorted(self.bad.items())
        shown = "; ".join(f"{a}: {why}" for a, why in items[:3])
        more = f"; and {len(items) - 3} more" if len(items) > 3 else ""
        return f"{shown}{more}"

    # -- the cluster
    def _check_client(self) -> None:
        if self.client.status != "running":
            raise DlacError(self.lost_scheduler())

    def _workers(self) -> set:
        self._check_client()
        return set(self.client.nthreads())

    def _probe(self, live: set) -> None:
        """Probe the live workers not probed yet; collect the probes that ended."""
        now = time.monotonic()
        for w in live - self.good.keys() - self.bad.keys() - self.probing.keys():
            fut = self.client.submit(self.probe, PROBE_MODULES, workers=[w], allow_other_workers=False,
                                     pure=False, key=f"dlac-import-probe-{w}-{now}")
            self.probing[w] = (fut, now)
        for w, (fut, t0) in list(self.probing.items()):
            if fut.status == "finished":
                got = fut.result(timeout=self.timeout)
                if got == __version__:
                    self.good[w] = got
                else:
                    self.bad[w] = _one_line(f"it has dlac {got!r}, this is dlac {__version__}")
            elif fut.status == "error":
                self.bad[w] = f"cannot import dlac: {_exc(fut.exception(timeout=self.timeout))}"
            elif w not in live:             # gone before it answered
                fut.release()
            elif now - t0 > self.timeout:
                self.bad[w] = f"did not answer the dlac import probe within {self.timeout:g} s"
                fut.release()
            else:
                continue
            del self.probing[w]

    def _usable(self, live: set) -> set:
        return live & self.good.keys()

    def _start(self) -> set:
        """The usable workers at the start: wait (up to the timeout) for a first worker,
        then until every worker there answered its probe."""
        deadline = time.monotonic() + self.timeout
        while True:
            live = self._workers()
            self._probe(live)
            usable = self._usable(live)
            if usable and not live & self.probing.keys():
                return usable
            if live and not usable and not self.probing:
                raise DlacError(f"no worker of the Dask cluster at {self.address!r} can run dlac: "
                                f"{self._bad_summary()} (every worker needs dlac {__version__} "
                                f"installed)")
            if not live and not self.probing and time.monotonic() > deadline:
                raise DlacError(f"the Dask cluster at {self.address!r} has no workers (waited "
                                f"{self.timeout:g} s)")
            time.sleep(DASK_POLL)

    def _outcome(self, fut):
        """The result of the finished ``fut``; ``None`` if it cannot be fetched (the worker
        holding it is gone: the caller submits the search again)."""
        try:
            return fut.result(timeout=self.timeout)
        except TimeoutError:
            self._check_client()
            return None

    def results(self, calls: dict):
        self.total = len(calls)
        usable = self._start()
        pending: dict = {}                # future -> (k, workers it may run on)

        def submit(k, workers):
            fut = self.client.submit(self.fn, *calls[k], workers=sorted(workers),
                                     allow_other_workers=False, pure=False)
            pending[fut] = (k, frozenset(workers))

        for k in calls:
            submit(k, usable)
        lost_since = None
        while pending:
            time.sleep(DASK_POLL)
            redo = []
            for fut, (k, allowed) in list(pending.items()):
                status = fut.status
                if status == "error":
                    e = fut.exception(timeout=self.timeout)
                    raise DlacError(f"{self._item(k)}: its {self.words.task} failed on the Dask cluster: "
                                    f"{_exc(e)}{self._progress()}")
                if status == "cancelled":
                    self._check_client()
                    raise DlacError(f"{self._item(k)}: the Dask scheduler cancelled its {self.words.task}"
                                    f"{self._progress()}")
                if status not in ("finished", "lost"):
                    continue
                out = self._outcome(fut) if status == "finished" else None
                del pending[fut]
                if out is None:
                    fut.release()
                    redo.append((k, allowed))
                    continue
                self.done += 1
                yield k, out
            if not pending and not redo:
                break
            live = self._workers()
            self._probe(live)
            usable = self._usable(live)
            for fut, (k, allowed) in list(pending.items()):
                if usable and not allowed & live:       # every worker it may run on is gone
                    del pending[fut]
                    fut.release()
                    redo.append((k, allowed))
            for k, allowed in redo:
                submit(k, usable or allowed)
            if usable:
                lost_since = None
                continue
            now = time.monotonic()
            lost_since = lost_since or now
            if now - lost_since > self.timeout:
                why = f" (the workers left: {self._bad_summary()})" if self.bad and live else ""
                raise DlacError(f"lost every Dask worker that can run dlac at {self.address!r}, "
                                f"and none came back within {self.timeout:g} s{why}{self._progress()}")


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` (from a worker) on one line, unprintable characters escaped, at most
    ``limit`` characters."""
    text = printable(" ".join(str(text).split()))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _exc(e: BaseException) -> str:
    """``Type: message`` of an exception from a worker, on one line."""
    return _one_line(f"{type(e).__name__}: {e}")
