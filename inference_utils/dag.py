"""A task graph executor: each task runs as soon as the tasks it depends on have finished.

Tasks are I/O-bound calls (an LLM endpoint, a tool server), so they run on threads. A task
may name a *lane* (one role endpoint, one tool server) whose concurrency is capped; other
lanes keep running meanwhile, so one slow endpoint does not stall the rest.

The graph may grow while it runs: ``on_done`` is called in the scheduling thread with each
finished task's result and may :meth:`TaskGraph.add` tasks that depend on it (a planner's
output decides whether a caller or a summarizer follows). A failed task fails its
dependents with :class:`DependencyFailed`; the others go on.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any


class DependencyFailed(RuntimeError):
    """A task did not run because a task it depends on failed."""

    def __init__(self, key: Hashable, dependency: Hashable, cause: BaseException):
        super().__init__(f"task {key!r}: dependency {dependency!r} failed: {cause}")
        self.key, self.dependency, self.cause = key, dependency, cause


class UnschedulableTasks(ValueError):
    """Tasks whose dependencies are missing or form a cycle."""


@dataclass
class Task:
    key: Hashable
    fn: Callable[..., Any]  # called with the results of ``deps``, in order
    deps: tuple[Hashable, ...] = ()
    lane: str | None = None


@dataclass
class Outcome:
    results: dict[Hashable, Any] = field(default_factory=dict)
    errors: dict[Hashable, BaseException] = field(default_factory=dict)

    def __getitem__(self, key: Hashable) -> Any:
        if key in self.errors:
            raise self.errors[key]
        return self.results[key]


class TaskGraph:
    """Runs :class:`Task` s on a thread pool as their dependencies complete.

    ``max_workers`` bounds the tasks in flight overall, ``lanes`` per lane (a lane not listed
    is bounded by ``max_workers`` only). Ready tasks start in the order they became ready.
    """

    def __init__(
        self,
        max_workers: int = 8,
        lanes: Mapping[str, int] | None = None,
        on_done: Callable[[TaskGraph, Hashable, Any], None] | None = None,
        on_error: Callable[[TaskGraph, Hashable, BaseException], None] | None = None,
    ):
        if max_workers < 1 or any(v < 1 for v in (lanes or {}).values()):
            raise ValueError("max_workers and lane limits must be at least 1")
        self.max_workers = max_workers
        self.lanes = dict(lanes or {})
        self.on_done = on_done
        self.on_error = on_error
        self.outcome = Outcome()
        self._lock = threading.Lock()
        self._tasks: dict[Hashable, Task] = {}
        self._missing: dict[Hashable, int] = {}  # waiting task → unfinished dependencies
        self._dependents: dict[Hashable, list[Hashable]] = {}
        # ready tasks per lane, each with its place in the order they became ready
        self._ready: dict[str | None, deque[tuple[int, Hashable]]] = {}
        self._order = itertools.count()
        self._doomed: list[tuple[Hashable, Hashable]] = []  # (task, failed dependency)

    def add(
        self,
        key: Hashable,
        fn: Callable[..., Any],
        deps: Iterable[Hashable] = (),
        lane: str | None = None,
    ) -> None:
        """Add a task (before :meth:`run`, or from ``on_done`` / ``on_error`` while it runs)."""
        task = Task(key, fn, tuple(deps), lane)
        with self._lock:
            if key in self._tasks:
                raise ValueError(f"task {key!r} was already added")
            self._tasks[key] = task
            failed = next((d for d in task.deps if d in self.outcome.errors), None)
            if failed is not None:
                self._doomed.append((key, failed))
                return
            pending = [d for d in set(task.deps) if d not in self.outcome.results]
            for dep in pending:
                self._dependents.setdefault(dep, []).append(key)
            if pending:
                self._missing[key] = len(pending)
            else:
                self._mark_ready(task)

    def _mark_ready(self, task: Task) -> None:  # under the lock
        self._ready.setdefault(task.lane, deque()).append((next(self._order), task.key))

    def _finished(self, key: Hashable, error: BaseException | None) -> None:
        with self._lock:
            for child in self._dependents.pop(key, []):
                if error is not None:
                    if self._missing.pop(child, None) is not None:
                        self._doomed.append((child, key))
                    continue
                self._missing[child] -= 1
                if self._missing[child] == 0:
                    del self._missing[child]
                    self._mark_ready(self._tasks[child])

    def _take_ready(self, busy: dict[str | None, int], free: int) -> list[Task]:
        """Up to ``free`` ready tasks, earliest first, skipping lanes at their limit."""
        start: list[Task] = []
        with self._lock:
            while len(start) < free:
                open_lanes = [
                    queue
                    for lane, queue in self._ready.items()
                    if queue and busy.get(lane, 0) < self.lanes.get(lane, self.max_workers)
                ]
                if not open_lanes:
                    break
                _, key = min(open_lanes, key=lambda queue: queue[0][0]).popleft()
                task = self._tasks[key]
                busy[task.lane] = busy.get(task.lane, 0) + 1
                start.append(task)
        return start

    def run(self) -> Outcome:
        """Run until no task is left; returns every task's result or error."""
        running: dict[Future, Task] = {}
        busy: dict[str | None, int] = {}
        with ThreadPoolExecutor(self.max_workers, thread_name_prefix="taskgraph") as pool:
            while True:
                while self._doomed:
                    with self._lock:
                        key, dep = self._doomed.pop(0)
                    cause = self.outcome.errors[dep]
                    self._fail(key, DependencyFailed(key, dep, cause))
                for task in self._take_ready(busy, self.max_workers - len(running)):
                    args = [self.outcome.results[d] for d in task.deps]
                    running[pool.submit(task.fn, *args)] = task
                if not running:
                    if self._doomed:
                        continue
                    with self._lock:
                        stuck = sorted(map(repr, self._missing))
                    if stuck:
                        raise UnschedulableTasks(
                            f"{len(stuck)} task(s) can never run (missing or cyclic "
                            f"dependencies): {', '.join(stuck[:5])}"
                        )
                    return self.outcome
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    task = running.pop(future)
                    busy[task.lane] -= 1
                    error = future.exception()
                    if error is None:
                        self.outcome.results[task.key] = future.result()
                        self._finished(task.key, None)
                        if self.on_done is not None:
                            self.on_done(self, task.key, future.result())
                    else:
                        self._fail(task.key, error)

    def _fail(self, key: Hashable, error: BaseException) -> None:
        self.outcome.errors[key] = error
        self._finished(key, error)
        if self.on_error is not None:
            self.on_error(self, key, error)
