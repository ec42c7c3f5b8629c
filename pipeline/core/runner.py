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
* the same skip / failure / fail-fast rules for a consumer that runs in this process and
  batches across videos (a GPU engine): :func:`run_batched` hands it the pending tasks and
  an :class:`Outcomes` to report each video to;
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
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Protocol, Sequence

from joblib import Parallel, delayed, parallel_config
from tqdm.auto import tqdm

from pipeline.core.section import Section, knob
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

    @property
    def name(self) -> str:
        """The name the runner reports this task by: its video."""
        return self.video

    def is_done(self) -> bool:
        """True when the output exists, complete, with this task's digest (never for ``output`` None)."""
        return self.output is not None and is_complete(self.output, self.digest)


class WorkItem(Protocol):
    """What :func:`map_items` needs of a unit of work: a name to report it by and whether it is done.

    A :class:`VideoTask` is one; so is a group of training folds (``pipeline.learning.folds``).
    """

    @property
    def name(self) -> str:
        """Unique within one run: results and failures are keyed by it."""
        ...

    def is_done(self) -> bool:
        """True when its output is already complete (it is then skipped)."""
        ...


@dataclass(frozen=True)
class ParallelParams(Section):
    """How to spread videos: the ``parallel`` params section."""

    SECTION: ClassVar[str] = "parallel"

    backend: str = knob("loky", choices=BACKENDS)
    n_jobs: int = knob(-1)              # -1: all cores (joblib's convention; 0 is refused)
    address: str | None = knob(None)    # dask scheduler; None (or empty): a local cluster
    fail_fast: bool = knob(False)

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None, where: str | None = None,  # type: ignore[override]
                    others: Iterable[type[Section]] = (), **overrides: Any) -> "ParallelParams":
        """Validate the ``parallel`` section (unknown keys refused); keyword overrides win when not None."""
        if isinstance(section, Mapping) or section is None:
            section = {**(section or {}), **{k: v for k, v in overrides.items() if v is not None}}
            if section.get("address") == "":
                section["address"] = None
        return super().from_params(section, where, others)

    def check(self, where: str) -> None:
        """``n_jobs`` 0 means nothing to joblib: refused."""
        if self.n_jobs == 0:
            raise ConfigError(f"{where}.n_jobs must not be 0 (-1: all cores, n > 0: n workers).")


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


def pending(tasks: Iterable[WorkItem]) -> tuple[list[Any], list[Any]]:
    """Split tasks into (to run, already complete with the same digest)."""
    todo, done = [], []
    for task in tasks:
        if task.is_done():
            done.append(task)
        else:
            todo.append(task)
    return todo, done


def skip_complete(tasks: Sequence[WorkItem], stage: str, unit: str = "video") -> list[Any]:
    """The tasks still to run; those already complete with their digest are skipped, with one log line."""
    todo, done = pending(tasks)
    if done:
        log.info("%s: %d of %d %ss already complete, skipped", stage, len(done), len(tasks), unit)
    return todo


def _skip_complete_feed(feed: TaskFeed, stage: str) -> TaskFeed:
    """A feed of the tasks of ``feed`` not already complete, each skipped one logged as it arrives."""
    def arriving() -> Iterator[VideoTask]:
        while (task := feed.get()) is not None:
            if task.is_done():
                log.info("%s: %s already complete, skipped", stage, task.name)
            else:
                yield task
    return TaskFeed(source=arriving())


def describe(exc: BaseException) -> tuple[str, str]:
    """(one-line reason, error class name) of a video's failure: a user error's message as it is,
    any other exception prefixed with its class (``ValueError: boom``)."""
    kind = type(exc).__name__
    return (str(exc) if isinstance(exc, M2esError) else f"{kind}: {exc}"), kind


class Outcomes:
    """What became of each video of one stage run: results, failures, and whether to stop.

    The one place of the runner's failure rules, used by :func:`map_videos` and by
    :func:`run_batched` consumers: a failure is logged at once (``<stage>: <video> failed:
    <reason>``), the other videos go on unless ``fail_fast`` (then :attr:`stopped` turns
    true at the first failure), and :meth:`finish` raises :class:`StageFailed` with one line
    per failed video. Safe to report from several threads (e.g. a writer thread).
    """

    def __init__(self, stage: str, fail_fast: bool = False) -> None:
        self.stage = stage
        self.fail_fast = fail_fast
        self.results: dict[str, Any] = {}
        self.failures: dict[str, str] = {}
        self.kinds: dict[str, str] = {}
        self._lock = threading.Lock()

    def succeeded(self, video: str, result: Any = None) -> None:
        """Record that ``video`` is done (its output committed), with what the stage returns for it."""
        with self._lock:
            self.results[video] = result

    def failed(self, video: str, error: BaseException | str, kind: str | None = None) -> None:
        """Record that ``video`` failed: an exception (its message and class name) or a one-line reason."""
        if isinstance(error, BaseException):
            reason, kind = describe(error)
        else:
            reason = str(error)
        with self._lock:
            self.failures[video] = reason
            if kind:
                self.kinds[video] = kind
        log.error("%s: %s failed: %s", self.stage, video, reason)

    @property
    def stopped(self) -> bool:
        """True once a video failed under ``fail_fast``: the consumer should stop taking work."""
        return self.fail_fast and bool(self.failures)

    def finish(self) -> dict[str, Any]:
        """{video: result} of the videos that succeeded; raises :class:`StageFailed` when any failed."""
        if self.failures:
            raise StageFailed(self.stage, self.failures, self.kinds)
        return dict(self.results)


#: a batched consumer: takes the pending tasks (a list, or a :class:`TaskFeed` of tasks still
#: arriving) and reports every video it finishes or fails to the :class:`Outcomes`
Consumer = Callable[[list[VideoTask] | TaskFeed, Outcomes], None]


def run_batched(consume: Consumer, tasks: Sequence[VideoTask] | TaskFeed, *, stage: str,
                fail_fast: bool = False) -> dict[str, Any]:
    """Run a consumer that works on many videos at once, in this process, with the runner's rules.

    Tasks already complete with their digest are skipped (and logged); the consumer gets the
    others (a list, or for a :class:`TaskFeed` a feed that drops complete tasks as they
    arrive; it is not called for an empty list) and an :class:`Outcomes`, to which it
    reports each video's success or failure, and whose ``stopped`` it checks to honour
    ``fail_fast``. Returns {video: result}; raises :class:`StageFailed` with one line per
    failed video, as :func:`map_videos` does. An exception escaping the consumer is not a
    video's failure: it propagates. Usage::

        def consume(todo: list[VideoTask], out: Outcomes) -> None:
            for video, result, error in engine.run(todo):      # batches across videos
                if error is not None:
                    out.failed(video, error)                   # an exception or a one-line reason
                else:
                    out.succeeded(video, result)               # after its output is committed
                if out.stopped:                                # fail_fast and a video failed
                    break

        results = run_batched(consume, tasks, stage="features", fail_fast=ctx.parallel.fail_fast)
    """
    outcomes = Outcomes(stage, fail_fast)
    if isinstance(tasks, TaskFeed):
        consume(_skip_complete_feed(tasks, stage), outcomes)
    else:
        todo = skip_complete(tasks, stage)
        if todo:
            consume(todo, outcomes)
    return outcomes.finish()


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


def _guarded(func: Callable[[Any], Any], task: WorkItem) -> tuple[str, bool, Any]:
    """Run ``func(task)``; an exception becomes ``(one-line reason, error class name)``.

    A task whose output is already complete with its digest when it starts is not run
    again (:data:`ALREADY_COMPLETE`): a cluster scheduler re-runs the finished tasks of a
    worker that died before their results were collected, and those videos must not be
    rewritten.
    """
    if task.is_done():
        return task.name, True, ALREADY_COMPLETE
    try:
        return task.name, True, func(task)
    except Exception as exc:  # noqa: BLE001 - reported per video, never swallowed silently
        if not isinstance(exc, M2esError):
            logging.getLogger(__name__).debug("%s failed:\n%s", task.name, traceback.format_exc(limit=3))
        return task.name, False, describe(exc)


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


def _in_worker(func: Callable[[Any], Any], task: WorkItem, driver_pid: int,
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
    parallel: ParallelParams | None = None,
) -> dict[str, Any]:
    """Run ``func`` on every video task not already complete; return {video: result} of the runs.

    Raises :class:`StageFailed` after all tasks ran (or at the first failure with
    ``fail_fast``) when any video failed; outputs of the others are kept.
    """
    return map_items(func, tasks, stage=stage, parallel=parallel, unit="video")


def map_items(
    func: Callable[[Any], Any],
    items: Sequence[WorkItem],
    *,
    stage: str,
    parallel: ParallelParams | None = None,
    unit: str = "item",
) -> dict[str, Any]:
    """:func:`map_videos` for any :class:`WorkItem` (``unit``: what an item is, for the log and the
    progress bar): {item name: result}; the same skip, failure and fail-fast rules."""
    cfg = parallel or ParallelParams()
    func = importable(func)
    todo = skip_complete(items, stage, unit)
    outcomes = Outcomes(stage, cfg.fail_fast)
    if not todo:
        return outcomes.finish()

    with ExitStack() as stack:
        if cfg.backend == "sequential" or cfg.n_jobs == 1 and cfg.backend != "dask":
            runs: Iterable[tuple[str, bool, Any, list[logging.LogRecord]]] = (
                (*_guarded(func, t), []) for t in todo)
        else:
            if cfg.backend == "dask":
                stack.enter_context(_dask_client(cfg.address))
            stack.enter_context(parallel_config(backend=cfg.backend, n_jobs=cfg.n_jobs))
            level = logging.getLogger(WORKER_LOGGERS[0]).getEffectiveLevel()
            runs = Parallel(return_as="generator_unordered")(
                delayed(_in_worker)(func, t, os.getpid(), level) for t in todo)
        bar = stack.enter_context(tqdm(total=len(todo), desc=stage, unit=unit))
        for video, ok, value, records in runs:
            for record in records:          # a worker's log lines, in the driver's log
                logging.getLogger(record.name).handle(record)
            bar.update(1)
            if not ok:
                reason, kind = value
                outcomes.failed(video, reason, kind)
            elif isinstance(value, str) and value == ALREADY_COMPLETE:
                log.info("%s: %s was already complete (a rescheduled task); not redone", stage, video)
            else:
                outcomes.succeeded(video, value)
            if outcomes.stopped:
                break
    return outcomes.finish()


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
