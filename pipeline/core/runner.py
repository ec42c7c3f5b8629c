"""The run-many-videos helper: map a per-video function over videos, resumably.

* joblib with a configurable backend: ``loky`` (processes, default), ``threading``
  (work that releases the GIL), or ``dask`` against a ``distributed`` scheduler
  (``parallel.address``; a local cluster when none is given);
* a tqdm progress bar;
* per-video resumability: a task whose output file is complete and was made with the
  same digest is skipped (see :mod:`pipeline.io.h5io`; the function itself must write its
  output through :func:`pipeline.io.h5io.atomic_h5` with ``task.digest``);
* error collection: other videos go on, and :class:`~pipeline.errors.StageFailed`
  lists every failed video with its reason (``fail_fast`` stops at the first);
* worker logs: what a task logs (``pipeline.*``, ``models.*``) in a worker process is sent
  back with its result and logged again by the driver, where the stage's log is: a loky or
  dask worker has no log of its own (its INFO lines went nowhere, its warnings to a stderr
  that on a cluster is another machine's).
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import sys
import threading
import traceback
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from joblib import Parallel, delayed, parallel_config
from tqdm.auto import tqdm

from pipeline.errors import ConfigError, M2esError, StageFailed
from pipeline.io.h5io import is_complete

log = logging.getLogger(__name__)

BACKENDS = ("loky", "threading", "dask", "sequential")


@dataclass
class VideoTask:
    """One unit of per-video work.

    ``output`` is the file the function writes (None: never skipped); ``digest`` the
    identity of params and inputs that the output must carry to count as done;
    ``payload`` whatever else the function needs (must pickle for process backends).
    """

    video: str
    output: Path | None
    digest: str
    payload: dict[str, Any] = field(default_factory=dict)

    def is_done(self) -> bool:
        """True when the output exists, complete, with this task's digest (never for ``output`` None)."""
        return self.output is not None and is_complete(self.output, self.digest)


@dataclass
class ParallelConfig:
    """How to spread videos: from ``params.yaml: parallel``."""

    backend: str = "loky"
    n_jobs: int = -1
    address: str | None = None
    fail_fast: bool = False

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None, **overrides: Any) -> "ParallelConfig":
        """Build from the ``parallel`` params section; keyword overrides win when not None."""
        section = dict(section or {})
        section.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(
            backend=str(section.get("backend", "loky")),
            n_jobs=int(section.get("n_jobs", -1)),
            address=section.get("address") or None,
            fail_fast=bool(section.get("fail_fast", False)),
        )
        if cfg.backend not in BACKENDS:
            raise ConfigError(f"params.yaml: parallel.backend '{cfg.backend}' is not one of {', '.join(BACKENDS)}.")
        return cfg


NOT_YET = object()  # TaskFeed.get(wait=False): no task has arrived yet
_END = object()


class TaskFeed:
    """Tasks for one consumer, either all known (``ready``) or arriving over time (``source``).

    A ``source`` iterable (which may block between items, e.g. while another stage is still
    writing inputs) is drained by a background thread, so the consumer can ask without
    blocking and do other work (flush a partial GPU batch) while nothing has arrived.
    """

    def __init__(self, ready: Iterable[VideoTask] = (), source: Iterable[VideoTask] | None = None):
        self._queue: queue.Queue = queue.Queue()
        for task in ready:
            self._queue.put(task)
        if source is None:
            self._queue.put(_END)
        else:
            threading.Thread(target=self._drain, args=(source,), name="task-feed", daemon=True).start()

    def _drain(self, source: Iterable[VideoTask]) -> None:
        try:
            for task in source:
                self._queue.put(task)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._queue.put(exc)
        finally:
            self._queue.put(_END)

    def get(self, wait: bool = True) -> Any:
        """The next task; None once the feed is exhausted; ``NOT_YET`` when ``wait`` is False and none is there.

        An exception raised by the source is raised here.
        """
        try:
            item = self._queue.get(block=wait)
        except queue.Empty:
            return NOT_YET
        if item is _END:
            self._queue.put(_END)  # every later call sees the end too
            return None
        if isinstance(item, BaseException):
            raise item
        return item


def pending(tasks: Iterable[VideoTask]) -> tuple[list[VideoTask], list[VideoTask]]:
    """Split tasks into (to run, already complete with the same digest)."""
    todo, done = [], []
    for task in tasks:
        if task.is_done():
            done.append(task)
        else:
            todo.append(task)
    return todo, done


def importable(func: Callable[..., Any]) -> Callable[..., Any]:
    """The same function looked up in its real module when it was defined in ``__main__``.

    ``python -m pipeline.crop`` runs the stage module as ``__main__``; worker processes
    cannot import that name, so its functions would be pickled by value (and lose the
    module's state). Resolving them to ``pipeline.crop.<name>`` pickles them by reference.
    """
    if getattr(func, "__module__", None) != "__main__":
        return func
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None or not spec.name:
        return func
    return getattr(importlib.import_module(spec.name), func.__name__, func)


#: what a task returns when its output was already complete when it started (see :func:`_guarded`)
ALREADY_COMPLETE = "m2es: output already complete"


def _guarded(func: Callable[[VideoTask], Any], task: VideoTask) -> tuple[str, bool, Any]:
    """Run ``func(task)``; an exception becomes ``(one-line reason, error class name)``.

    A task whose output is already complete with its digest when it starts is not run
    again (:data:`ALREADY_COMPLETE`): a cluster scheduler re-runs the finished tasks of a
    worker that died before their results were collected, and those videos must not be
    rewritten.
    """
    if task.is_done():
        return task.video, True, ALREADY_COMPLETE
    try:
        return task.video, True, func(task)
    except M2esError as exc:
        return task.video, False, (str(exc), type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - reported per video, never swallowed silently
        detail = traceback.format_exc(limit=3)
        logging.getLogger(__name__).debug("%s failed:\n%s", task.video, detail)
        return task.video, False, (f"{type(exc).__name__}: {exc}", type(exc).__name__)


#: the loggers whose records a worker process sends back to the driver
WORKER_LOGGERS = ("pipeline", "models")


class _KeptRecords(logging.Handler):
    """Keeps the records logged by one thread, made plain (message formatted, traceback as text)
    to travel between processes. One per task: a dask worker runs tasks in several threads."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.thread = threading.get_ident()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        record.msg, record.args, record.exc_info, record.exc_text = message, None, None, None
        self.records.append(record)


@contextmanager
def _kept_logs(level: int) -> Iterator[list[logging.LogRecord]]:
    """While inside: what this thread logs to the :data:`WORKER_LOGGERS`, kept. Only in a worker
    process: the loggers are set there to the driver's ``level`` and not propagated (the worker's
    own log is nowhere the user looks), and stay so; every task of one driver sets the same."""
    handler = _KeptRecords()
    loggers = [logging.getLogger(name) for name in WORKER_LOGGERS]
    for lg in loggers:
        lg.setLevel(level)
        lg.propagate = False
        lg.addHandler(handler)
    try:
        yield handler.records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def _in_worker(func: Callable[[VideoTask], Any], task: VideoTask, driver_pid: int,
               level: int) -> tuple[str, bool, Any, list[logging.LogRecord]]:
    """:func:`_guarded` in a joblib worker, with the task's log records (none when the worker is a
    thread of the driver, whose log they reach directly)."""
    if os.getpid() == driver_pid:
        return (*_guarded(func, task), [])
    with _kept_logs(level) as records:
        outcome = _guarded(func, task)
    return (*outcome, records)


def map_videos(
    func: Callable[[VideoTask], Any],
    tasks: Sequence[VideoTask],
    *,
    stage: str,
    parallel: ParallelConfig | None = None,
    unit: str = "video",
) -> dict[str, Any]:
    """Run ``func`` on every task not already complete; return {video: result} of the runs
    (``unit``: what a task is, for the progress bar).

    Raises :class:`StageFailed` after all tasks ran (or at the first failure with
    ``fail_fast``) when any video failed; outputs of the others are kept.
    """
    cfg = parallel or ParallelConfig()
    func = importable(func)
    todo, done = pending(tasks)
    if done:
        log.info("%s: %d of %d videos already complete, skipped", stage, len(done), len(tasks))
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    kinds: dict[str, str] = {}
    if not todo:
        return results

    with ExitStack() as stack:
        if cfg.backend == "sequential" or cfg.n_jobs == 1 and cfg.backend != "dask":
            outcomes: Iterable[tuple[str, bool, Any, list[logging.LogRecord]]] = (
                (*_guarded(func, t), []) for t in todo)
        else:
            if cfg.backend == "dask":
                stack.enter_context(_dask_client(cfg.address))
            stack.enter_context(parallel_config(backend=cfg.backend, n_jobs=cfg.n_jobs))
            level = logging.getLogger(WORKER_LOGGERS[0]).getEffectiveLevel()
            outcomes = Parallel(return_as="generator_unordered")(
                delayed(_in_worker)(func, t, os.getpid(), level) for t in todo)
        bar = stack.enter_context(tqdm(total=len(todo), desc=stage, unit=unit))
        for video, ok, value, records in outcomes:
            for record in records:          # a worker's log lines, in the driver's log
                logging.getLogger(record.name).handle(record)
            bar.update(1)
            if ok:
                if isinstance(value, str) and value == ALREADY_COMPLETE:
                    log.info("%s: %s was already complete (a rescheduled task); not redone", stage, video)
                else:
                    results[video] = value
                continue
            failures[video], kinds[video] = value
            log.error("%s: %s failed: %s", stage, video, failures[video])
            if cfg.fail_fast:
                break
    if failures:
        raise StageFailed(stage, failures, kinds)
    return results


def _dask_client(address: str | None):
    """A ``distributed`` client for the joblib dask backend (local cluster if no address)."""
    try:
        from dask.distributed import Client
    except ImportError as exc:
        raise ConfigError(
            "parallel.backend is 'dask' but dask.distributed is not installed: pip install -e '.[distributed]'."
        ) from exc
    if address:
        return Client(address)
    # Client(...) without an address starts and owns a LocalCluster, closed with the client;
    # Client(LocalCluster(...)) would leave the cluster's processes running after the stage.
    return Client(processes=True, threads_per_worker=1)
