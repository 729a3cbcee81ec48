"""A task graph executor: each task runs as soon as the tasks it depends on have finished, and
plans of tool calls run on it.

Tasks are I/O-bound calls (an LLM endpoint, a tool server), so they run on threads. A task
may name a *lane* (one role endpoint, one tool server) whose concurrency is capped; other
lanes keep running meanwhile, so one slow endpoint does not stall the rest.

The graph may grow while it runs: ``on_done`` is called in the scheduling thread with each
finished task's result and may :meth:`TaskGraph.add` tasks that depend on it (a planner's
output decides whether a caller or a summarizer follows). With ``streaming=True`` other
threads may add tasks too, until :meth:`TaskGraph.close`. A failed task fails its dependents
with :class:`DependencyFailed`; the others go on.

Scheduling is event-driven: workers report each finished task on one queue that the
scheduling thread blocks on (with the earliest task deadline as its only timeout), so a
finished task costs O(1) and nothing polls. A task past its ``timeout`` fails with
:class:`TaskTimeout` at once; its worker is a daemon thread that is abandoned, not joined (a
call that never returns holds that thread, never :meth:`TaskGraph.run` or the interpreter's
exit), and a fresh worker takes its place.

A *plan* (:class:`PlanRunner`) is a set of tool calls ``{id, tool, arguments}`` whose
argument values may use earlier calls' results, as an agent's tool calls or an
LLMCompiler-style planner's output. The references, in any string value of the arguments
(walked through lists and dicts; keys are never references):

* a whole value ``"$N"`` or ``"${N}"`` becomes task N's response itself (a dict, a list, a
  number);
* ``${N}`` inside longer text becomes the response's text (JSON unless it is a string);
* a bare ``$N`` inside longer text is literal text ("costs $1 each"), never a dependency:
  LLMCompiler reads it as one, and waits on a task that may not exist.

A reference must name an earlier task of the plan. The plan is validated before anything
runs, may arrive one call at a time while earlier calls run (:meth:`PlanRunner.start`), and
every call ends as an :class:`~inference_utils.toolclient.Observation`: a tool that raises,
hangs past its timeout or returns something that is not JSON, and a call whose dependency
failed, each yield an error observation that the agent can show to the model.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Any

from process_data.protocol import REQUEST_FAILED, Observation


class DependencyFailed(RuntimeError):
    """A task did not run because a task it depends on failed."""

    def __init__(self, key: Hashable, dependency: Hashable, cause: BaseException):
        super().__init__(f"task {key!r}: dependency {dependency!r} failed: {cause}")
        self.key, self.dependency, self.cause = key, dependency, cause


class TaskTimeout(TimeoutError):
    """A task ran past its timeout; its thread was left to finish on its own."""

    def __init__(self, key: Hashable, timeout: float):
        super().__init__(f"task {key!r} timed out after {timeout:g} s")
        self.key, self.timeout = key, timeout


class UnschedulableTasks(ValueError):
    """Tasks whose dependencies are missing or form a cycle."""


@dataclass(slots=True)
class Task:
    key: Hashable
    fn: Callable[..., Any]  # called with the results of ``deps``, in order
    deps: tuple[Hashable, ...] = ()
    lane: str | None = None
    timeout: float | None = None  # seconds from when a worker starts the task
    on_done: Callable[[Any], None] | None = None  # instead of the graph's, for this task
    on_error: Callable[[BaseException], None] | None = None


@dataclass
class Outcome:
    results: dict[Hashable, Any] = field(default_factory=dict)
    errors: dict[Hashable, BaseException] = field(default_factory=dict)

    def __getitem__(self, key: Hashable) -> Any:
        if key in self.errors:
            raise self.errors[key]
        return self.results[key]


_WAKE = object()  # an event that only wakes the scheduler (a task added, the graph closed)


class _Workers:
    """Daemon threads that take tasks from one queue and put ``(key, ok, result or error)``
    on ``events``.

    There are at most ``size`` threads besides those stuck in a task that has timed out:
    each abandoned task gets a thread in its place, which goes once the stuck call returns.
    Only the scheduling thread calls the methods, so nothing is locked; the threads only
    write ``started`` (when each timed task began), one key per task.
    """

    def __init__(self, events: SimpleQueue, size: int, name: str):
        self.events, self.size, self.name = events, size, name
        self.jobs: SimpleQueue = SimpleQueue()
        self.started: dict[Hashable, float] = {}
        self.threads = 0
        self.unreturned = 0  # tasks handed over whose outcome has not come back
        self.stuck = 0  # of those, the ones abandoned after their timeout

    def submit(self, key: Hashable, fn: Callable[..., Any], args: list[Any], timed: bool):
        self.unreturned += 1
        self._grow()
        self.jobs.put((key, fn, args, timed))

    def returned(self, key: Hashable, abandoned: bool) -> None:
        self.unreturned -= 1
        self.started.pop(key, None)
        if abandoned:
            self.stuck -= 1
            if self.threads > self.size + self.stuck:
                self.threads -= 1
                self.jobs.put(None)

    def drop_queued(self) -> list[Hashable]:
        """Take back the tasks handed over that no thread has started; their keys."""
        dropped, sentinels = [], 0
        try:
            while True:
                job = self.jobs.get_nowait()
                if job is None:
                    sentinels += 1
                else:
                    dropped.append(job[0])
        except Empty:
            pass
        for _ in range(sentinels):
            self.jobs.put(None)
        self.unreturned -= len(dropped)
        return dropped

    def abandon(self) -> None:
        """A task timed out: its thread stays with it; another takes its place."""
        self.stuck += 1
        self._grow()

    def _grow(self) -> None:
        while self.threads < min(self.size + self.stuck, self.unreturned):
            self.threads += 1
            name = f"{self.name}-{self.threads}"
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def stop(self) -> None:
        """Drop the tasks not started; each thread exits after its current task (a stuck one
        once its call returns)."""
        try:
            while True:
                self.jobs.get_nowait()
        except Empty:
            pass
        for _ in range(self.threads):
            self.jobs.put(None)

    def _work(self) -> None:
        get, put, started, clock = self.jobs.get, self.events.put, self.started, time.monotonic
        while (job := get()) is not None:
            key, fn, args, timed = job
            if timed:
                started[key] = clock()
            try:
                put((key, True, fn(*args)))
            except BaseException as exc:  # noqa: BLE001 (the task's error is its outcome)
                put((key, False, exc))
            del job, fn, args


class TaskGraph:
    """Runs :class:`Task` s on threads as their dependencies complete.

    ``max_workers`` bounds the tasks running at once (not counting those abandoned after their
    timeout), ``lanes`` the tasks of a lane (a lane not listed is bounded by ``max_workers``
    only). Ready tasks start in the order they became ready. With ``streaming=True``,
    :meth:`run` returns only after :meth:`close`, so that tasks may be added from any thread
    while it runs.

    A finished task is forgotten (its function, its place in the schedule); its result or
    error stays in :attr:`outcome` for :meth:`run` to return and for tasks added later to
    depend on. A long-lived graph passes ``keep_results=False``: results then go only to
    ``on_done`` / ``on_error`` and the graph holds nothing of a finished task, so its memory
    stays flat however many tasks run; a task added later may not depend on a finished one.
    """

    def __init__(
        self,
        max_workers: int = 8,
        lanes: Mapping[str, int] | None = None,
        on_done: Callable[[TaskGraph, Hashable, Any], None] | None = None,
        on_error: Callable[[TaskGraph, Hashable, BaseException], None] | None = None,
        streaming: bool = False,
        keep_results: bool = True,
    ):
        if max_workers < 1 or any(v < 1 for v in (lanes or {}).values()):
            raise ValueError("max_workers and lane limits must be at least 1")
        self.max_workers = max_workers
        self.lanes = dict(lanes or {})
        self.on_done = on_done
        self.on_error = on_error
        self.keep_results = keep_results
        self.outcome = Outcome()
        self._lock = threading.Lock()
        self._tasks: dict[Hashable, Task] = {}
        self._missing: dict[Hashable, int] = {}  # waiting task → unfinished dependencies
        self._dependents: dict[Hashable, list[Hashable]] = {}
        # ready tasks per lane, each with its place in the order they became ready
        self._ready: dict[str | None, deque[tuple[int, Hashable]]] = {}
        self._order = itertools.count()
        self._doomed: deque[tuple[Hashable, Hashable]] = deque()  # (task, failed dependency)
        self._readers: dict[Hashable, int] = {}  # kept outcome → dependents yet to take it
        self._closed = not streaming
        self.cancelled = False
        self._events: SimpleQueue | None = None  # the running scheduler's, to wake it
        self._scheduler: int | None = None  # the running scheduler's thread id

    def add(
        self,
        key: Hashable,
        fn: Callable[..., Any],
        deps: Iterable[Hashable] = (),
        lane: str | None = None,
        timeout: float | None = None,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Add a task: before :meth:`run`, from ``on_done`` / ``on_error`` while it runs, or
        from any thread while a streaming graph runs. ``timeout``: seconds the task may run.
        ``on_done(result)`` / ``on_error(error)``, when given, are called for this task (in
        the scheduling thread) instead of the graph's callbacks: a driver adds each piece of
        work with what follows it."""
        if timeout is not None and not timeout > 0:
            raise ValueError(f"task {key!r}: timeout must be positive, not {timeout!r}")
        task = Task(key, fn, tuple(deps), lane, timeout, on_done, on_error)
        with self._lock:
            if self.cancelled:
                return
            if key in self._tasks or key in self.outcome.results or key in self.outcome.errors:
                raise ValueError(f"task {key!r} was already added")
            if not self.keep_results and task.deps:
                self._check_deps_kept(task)
            self._tasks[key] = task
            if task.deps:
                self._wait_for_deps(task)
            else:
                self._mark_ready(task)
            events = self._events
        if events is not None and threading.get_ident() != self._scheduler:
            events.put(_WAKE)

    def _check_deps_kept(self, task: Task) -> None:  # under the lock
        gone = [d for d in task.deps if d not in self._tasks]
        if gone:
            raise ValueError(
                f"task {task.key!r} depends on {gone[0]!r}, which this graph does not know: a "
                "graph with keep_results=False forgets finished tasks, so add dependents first"
            )

    def _wait_for_deps(self, task: Task) -> None:  # under the lock
        failed = next((d for d in task.deps if d in self.outcome.errors), None)
        if failed is not None:
            self._doomed.append((task.key, failed))
            return
        pending = [d for d in set(task.deps) if d not in self.outcome.results]
        for dep in pending:
            self._dependents.setdefault(dep, []).append(task.key)
        if pending:
            self._missing[task.key] = len(pending)
        else:
            self._mark_ready(task)

    def close(self) -> None:
        """No more tasks will come from other threads: :meth:`run` returns once all are done."""
        with self._lock:
            self._closed = True
            events = self._events
        if events is not None:
            events.put(_WAKE)

    def cancel(self) -> None:
        """Start no more tasks: those not yet started are dropped (they get neither a result
        nor an error, and no callback), and :meth:`run` returns once the running ones have
        finished. Tasks added afterwards are dropped too."""
        with self._lock:
            self.cancelled = self._closed = True
            for key in [k for queue in self._ready.values() for _, k in queue]:
                self._tasks.pop(key, None)
            for key in [*self._missing, *(task for task, _ in self._doomed)]:
                self._tasks.pop(key, None)
            self._ready.clear()
            self._missing.clear()
            self._dependents.clear()
            self._doomed.clear()
            events = self._events
        if events is not None:
            events.put(_WAKE)

    def _mark_ready(self, task: Task) -> None:  # under the lock
        self._ready.setdefault(task.lane, deque()).append((next(self._order), task.key))

    def _finished(self, key: Hashable, error: BaseException | None, value: Any = None) -> None:
        """Record a task's outcome (kept while a dependent still needs it, unless the graph
        keeps results) and release or doom its dependents."""
        with self._lock:
            del self._tasks[key]
            children = self._dependents.pop(key, [])
            if self.keep_results or children:
                if error is None:
                    self.outcome.results[key] = value
                else:
                    self.outcome.errors[key] = error
                if not self.keep_results:
                    self._readers[key] = len(children)
            for child in children:
                if child not in self._missing:  # doomed already, by another dependency
                    self._read([key])
                elif error is not None:
                    del self._missing[child]
                    self._doomed.append((child, key))
                else:
                    self._missing[child] -= 1
                    if self._missing[child] == 0:
                        del self._missing[child]
                        self._mark_ready(self._tasks[child])

    def _read(self, deps: Iterable[Hashable]) -> None:  # under the lock
        """Dependents took these outcomes: forget each once its last dependent has."""
        if self.keep_results:
            return
        for dep in deps:
            left = self._readers.get(dep)
            if left is None:
                continue
            if left > 1:
                self._readers[dep] = left - 1
            else:
                del self._readers[dep]
                self.outcome.results.pop(dep, None)
                self.outcome.errors.pop(dep, None)

    def _take_ready(self, busy: defaultdict[str | None, int], in_flight: int) -> list[Task]:
        """The ready tasks that may start now, in the order they became ready.

        A lane with a limit gives what it has room for. The threads bound the rest, so all of
        them are handed over at once (workers then take one after another without waiting for
        this thread), unless a lane at its limit holds ready tasks: then no more than
        ``max_workers`` are in flight, so that the next free worker goes to the task that has
        been ready longest, as it would without the queue.
        """
        start: list[Task] = []
        limits = self.lanes
        with self._lock:
            while True:
                open_lanes, blocked = [], False
                for lane, queue in self._ready.items():
                    if queue:
                        if lane not in limits or busy[lane] < limits[lane]:
                            open_lanes.append((lane, queue))
                        else:
                            blocked = True
                room = self.max_workers - in_flight - len(start) if blocked else len(self._tasks)
                if not open_lanes or room <= 0:
                    return start
                if len(open_lanes) == 1:  # take what the one lane allows at once
                    lane, queue = open_lanes[0]
                    take = min(len(queue), room)
                    if lane in limits:
                        take = min(take, limits[lane] - busy[lane])
                else:
                    lane, queue = min(open_lanes, key=lambda item: item[1][0][0])
                    take = 1
                busy[lane] += take
                start.extend(self._tasks[queue.popleft()[1]] for _ in range(take))

    def run(self) -> Outcome:
        """Run until no task is left (and, if streaming, the graph is closed); returns every
        task's result or error. Raises :class:`UnschedulableTasks` for tasks that can never
        run, and what an ``on_done`` / ``on_error`` callback raises."""
        events: SimpleQueue = SimpleQueue()
        workers = _Workers(events, self.max_workers, "taskgraph")
        running: dict[Hashable, Task] = {}  # handed to the workers, outcome not yet known
        busy: defaultdict[str | None, int] = defaultdict(int)
        deadlines: list[tuple[float, int, Hashable]] = []  # (no sooner than, tie-break, task)
        ties = itertools.count()
        results = self.outcome.results
        with self._lock:
            self._events, self._scheduler = events, threading.get_ident()
        try:
            while True:
                while self._doomed:
                    with self._lock:
                        key, dep = self._doomed.popleft()
                        cause = self.outcome.errors[dep]
                        self._read(set(self._tasks[key].deps))
                    self._fail(key, DependencyFailed(key, dep, cause))
                now = time.monotonic()
                for task in self._take_ready(busy, len(running)):
                    running[task.key] = task
                    if task.timeout is not None:  # it runs for no less than from now
                        heapq.heappush(deadlines, (now + task.timeout, next(ties), task.key))
                    args = [results[d] for d in task.deps]
                    if task.deps and not self.keep_results:
                        with self._lock:
                            self._read(set(task.deps))
                    workers.submit(task.key, task.fn, args, task.timeout is not None)
                if not running:
                    if self._doomed:
                        continue
                    if self._closed:
                        with self._lock:
                            done = not any(self._ready.values()) and not self._doomed
                            stuck = sorted(map(repr, self._missing))
                        if not done:  # added from another thread meanwhile
                            continue
                        if stuck:
                            raise UnschedulableTasks(
                                f"{len(stuck)} task(s) can never run (missing or cyclic "
                                f"dependencies): {', '.join(stuck[:5])}"
                            )
                        return self.outcome
                while deadlines and deadlines[0][2] not in running:
                    heapq.heappop(deadlines)  # finished in time
                try:
                    if deadlines:
                        event = events.get(timeout=max(0.0, deadlines[0][0] - time.monotonic()))
                    else:
                        event = events.get()
                except Empty:
                    event = _WAKE
                while True:
                    if event is not _WAKE:
                        self._complete(running, busy, workers, *event)
                    if events.empty():
                        break
                    event = events.get()
                if deadlines:
                    self._expire(running, busy, workers, deadlines, ties)
                if self.cancelled:  # tasks handed over but not started are dropped too
                    for key in workers.drop_queued():
                        busy[running.pop(key).lane] -= 1
                        with self._lock:
                            self._tasks.pop(key, None)
        finally:
            with self._lock:
                self._events = self._scheduler = None
            workers.stop()

    def _complete(
        self,
        running: dict[Hashable, Task],
        busy: defaultdict[str | None, int],
        workers: _Workers,
        key: Hashable,
        ok: bool,
        value: Any,
    ) -> None:
        task = running.pop(key, None)
        workers.returned(key, abandoned=task is None)
        if task is None:  # it had timed out: its outcome comes too late
            return
        busy[task.lane] -= 1
        if ok:
            self._finished(key, None, value)
            if task.on_done is not None:
                task.on_done(value)
            elif self.on_done is not None:
                self.on_done(self, key, value)
        else:
            self._fail(key, value)

    def _expire(
        self,
        running: dict[Hashable, Task],
        busy: defaultdict[str | None, int],
        workers: _Workers,
        deadlines: list[tuple[float, int, Hashable]],
        ties: Iterator[int],
    ) -> None:
        """Fail the tasks past their timeout, counted from when a worker started each (a
        deadline that comes before that is pushed back)."""
        now = time.monotonic()
        while deadlines and deadlines[0][0] <= now:
            key = heapq.heappop(deadlines)[2]
            task = running.get(key)
            if task is None or task.timeout is None:
                continue
            began = workers.started.get(key)
            when = now + task.timeout if began is None else began + task.timeout
            if when > now:
                heapq.heappush(deadlines, (when, next(ties), key))
                continue
            del running[key]
            busy[task.lane] -= 1
            workers.abandon()
            self._fail(key, TaskTimeout(key, task.timeout))

    def _fail(self, key: Hashable, error: BaseException) -> None:
        task = self._tasks.get(key)
        self._finished(key, error)
        if task is not None and task.on_error is not None:
            task.on_error(error)
        elif self.on_error is not None:
            self.on_error(self, key, error)


# --------------------------------------------------------------------------------------------
# Plans of tool calls

#: A whole argument value that is a reference: ``$N`` or ``${N}``.
_WHOLE_REFERENCE = re.compile(r"\$(\d+)|\$\{(\d+)\}")
#: A reference inside longer text: only the braced form, so that "costs $1 each" stays text.
_TEXT_REFERENCE = re.compile(r"\$\{(\d+)\}")

Tool = Callable[[dict[str, Any]], Any]


class PlanError(ValueError):
    """A plan that cannot run; ``problems`` holds ``(task, reason)`` pairs, where the task is
    its id or, for a task without a usable id, ``#position`` in the plan (from 1)."""

    def __init__(self, problems: list[tuple[object, str]]):
        self.problems = problems
        super().__init__("; ".join(f"task {who}: {why}" for who, why in problems))


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One task of a plan: call ``tool`` with ``arguments`` (a JSON object)."""

    id: int
    tool: str
    arguments: dict[str, Any]

    @classmethod
    def of(cls, task: ToolCall | Mapping[str, Any], position: int = 0) -> ToolCall:
        """A plan task from ``{"id", "tool", "arguments"}``; ``arguments`` may be the JSON
        text of an object, as OpenAI-style tool calls carry it."""
        if isinstance(task, ToolCall):
            return task
        if type(task) is not dict and not isinstance(task, Mapping):
            raise PlanError([(f"#{position}", f"a task is an object, not {type(task).__name__}")])
        ident = task.get("id")
        if type(ident) is not int or ident < 0:
            why = "no id" if ident is None else f"the id must be an integer ≥ 0, not {ident!r}"
            raise PlanError([(f"#{position}", why)])
        tool = task.get("tool")
        if not isinstance(tool, str) or not tool:
            raise PlanError([(ident, f"the tool must be a name, not {tool!r}")])
        arguments = task.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError as exc:
                raise PlanError([(ident, f"the arguments are not JSON: {exc}")]) from None
        if not isinstance(arguments, dict):
            kind = type(arguments).__name__
            raise PlanError([(ident, f"the arguments must be a JSON object, not {kind}")])
        return cls(ident, tool, arguments)


def references(value: Any) -> set[int]:
    """The task ids that ``value`` (a call's arguments, walked through lists and dicts)
    refers to: a whole string ``"$N"`` or ``"${N}"``, or ``${N}`` inside text. A bare ``$N``
    inside longer text is literal text, and dict keys are never references."""
    found: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "$" not in item:
                continue
            whole = _WHOLE_REFERENCE.fullmatch(item)
            if whole:
                found.add(int(whole[1] or whole[2]))
            else:
                found.update(int(m[1]) for m in _TEXT_REFERENCE.finditer(item))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


def observation_text(observation: Observation) -> str:
    """A result as it goes into text: its response, as JSON unless it is a string."""
    response = observation.response
    return response if isinstance(response, str) else json.dumps(response, ensure_ascii=False)


def substitute(value: Any, results: Mapping[int, Observation]) -> Any:
    """``value`` with its references (see :func:`references`) replaced: a whole ``"$N"`` by
    task N's response itself (a dict stays a dict, a number a number), ``${N}`` inside text
    by the response's text. Responses are not copied: tools must not change their input."""
    if isinstance(value, str):
        if "$" not in value:
            return value
        whole = _WHOLE_REFERENCE.fullmatch(value)
        if whole:
            return results[int(whole[1] or whole[2])].response
        return _TEXT_REFERENCE.sub(lambda m: observation_text(results[int(m[1])]), value)
    if isinstance(value, dict):
        return {k: substitute(v, results) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [substitute(v, results) for v in value]
    return value


def _problems(
    call: ToolCall, earlier: Mapping[int, Any], tools: Mapping[str, Tool], plan: Iterable = ()
) -> tuple[list[str], set[int]]:
    """Why ``call`` cannot follow the ``earlier`` tasks (``plan``: the ids of the whole plan,
    where it is known), and the ids it refers to."""
    reasons = []
    if call.tool not in tools:
        known = ", ".join(sorted(tools)[:10]) + (", ..." if len(tools) > 10 else "")
        reasons.append(f"unknown tool {call.tool!r} (tools: {known})")
    if call.id in earlier:
        reasons.append("a duplicate id")
    refs = references(call.arguments) if call.arguments else set()
    for ref in sorted(refs) if refs else ():
        if ref == call.id:
            reasons.append(f"refers to itself (${ref}): a cycle")
        elif ref in earlier:
            continue
        elif ref in plan:
            reasons.append(f"refers to task {ref}, which comes later in the plan")
        elif plan:
            reasons.append(f"refers to task {ref}, which is not in the plan")
        else:
            reasons.append(f"refers to task {ref}, which is not an earlier task of the plan")
    return reasons, refs


def _cycle(edges: Mapping[int, set[int]]) -> list[int] | None:
    """One cycle of the reference graph (``edges``: id → the ids it refers to) longer than one
    task, as ids, or None."""
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    for root in edges:
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(edges[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif nxt == path[-1] or nxt not in edges or state.get(nxt) == 2:
                continue
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            else:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges[nxt])))
    return None


def validate_plan(
    plan: Iterable[ToolCall | Mapping[str, Any]], tools: Mapping[str, Tool]
) -> list[ToolCall]:
    """The plan's calls, or :class:`PlanError` with every problem: a task that is not an
    object, a missing or bad id, a duplicate id, an unknown tool, arguments that are not a
    JSON object, a reference to a later task or to one not in the plan, a cycle. Ids need
    not be consecutive."""
    return [call for call, _ in _checked(plan, tools)]


def _checked(
    plan: Iterable[ToolCall | Mapping[str, Any]], tools: Mapping[str, Tool]
) -> list[tuple[ToolCall, set[int]]]:
    """:func:`validate_plan`, with the ids each call refers to."""
    calls: list[ToolCall] = []
    problems: list[tuple[object, str]] = []
    for position, task in enumerate(plan, 1):
        try:
            calls.append(ToolCall.of(task, position))
        except PlanError as exc:
            problems.extend(exc.problems)
    ids = {c.id for c in calls}
    earlier: dict[int, set[int]] = {}  # id → the ids it refers to
    checked = []
    for call in calls:
        reasons, refs = _problems(call, earlier, tools, ids)
        problems.extend((call.id, why) for why in reasons)
        earlier.setdefault(call.id, refs)
        checked.append((call, refs))
    if problems:  # a cycle has a forward reference, so it is among them
        cycle = _cycle(earlier)
        if cycle:
            problems.append((cycle[0], "in a cycle: " + " → ".join(map(str, cycle))))
        raise PlanError(problems)
    return checked


class _ToolFailed(Exception):
    """A call whose observation is an error: its dependents do not run."""

    def __init__(self, observation: Observation):
        super().__init__(observation.error)
        self.observation = observation


def error_observation(text: str) -> Observation:
    """An observation for a call that failed on our side (ToolBench's code for a failed
    request), so that the agent shows it to the model as it shows a tool server's errors."""
    return Observation(text, "", REQUEST_FAILED)


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, (str, int, float)):
        return not isinstance(value, float) or value == value and abs(value) != float("inf")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _as_observation(call: ToolCall, result: Any) -> Observation:
    """A tool's result as an observation: an :class:`Observation` as it is, any JSON value as
    a normal answer; anything else, or an error observation, raises :class:`_ToolFailed`."""
    if isinstance(result, Observation):
        if not isinstance(result.error, str) or not _is_json(result.response):
            raise _ToolFailed(error_observation(f"tool {call.tool!r} returned a broken answer"))
        if result.error:
            raise _ToolFailed(result)
        return result
    if not _is_json(result):
        kind = type(result).__name__
        raise _ToolFailed(error_observation(f"tool {call.tool!r} returned {kind}, not JSON"))
    return Observation("", result, 0)


class PlanRunner:
    """Runs plans of tool calls on a :class:`TaskGraph`: each call as soon as the calls it
    refers to have answered, at most ``max_workers`` at once, each for at most ``timeout``
    seconds. ``tools`` maps a name to a function of the call's arguments (a dict)."""

    def __init__(self, tools: Mapping[str, Tool], timeout: float = 60.0, max_workers: int = 8):
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {max_workers!r}")
        self.tools, self.timeout, self.max_workers = tools, timeout, max_workers

    def run(self, plan: Iterable[ToolCall | Mapping[str, Any]]) -> dict[int, Observation]:
        """Validate the whole plan (:class:`PlanError`, and nothing runs), run it, and return
        each call's observation by id, in plan order."""
        checked = _checked(plan, self.tools)
        graph = TaskGraph(self.max_workers)
        for call, refs in checked:
            self._add(graph, call, refs)
        return self._observations(graph.run(), [call for call, _ in checked])

    def start(self) -> PlanStream:
        """A plan that runs while it arrives: :meth:`PlanStream.submit` each call."""
        return PlanStream(self)

    def schedule(
        self,
        graph: TaskGraph,
        plan: Iterable[ToolCall | Mapping[str, Any]],
        key: Hashable,
        lane: str | None,
        on_complete: Callable[[dict[int, Observation]], None],
    ) -> None:
        """Validate the whole plan (:class:`PlanError`, and nothing is added), then add its
        calls to ``graph`` as tasks ``(key, id)`` on ``lane``, so that they count against the
        lane's cap like any other call there; ``on_complete`` gets each call's observation
        by id, in plan order, once the last has one."""
        checked = _checked(plan, self.tools)
        calls = [call for call, _ in checked]
        observations: dict[int, Observation] = {}

        def record(call: ToolCall, value: Any = None, error: BaseException | None = None) -> None:
            observations[call.id] = (
                value if error is None else _error_observation(call, error, observations)
            )
            if len(observations) == len(calls):
                on_complete({c.id: observations[c.id] for c in calls})

        for call, refs in checked:
            self._add(
                graph,
                call,
                refs,
                key=(key, call.id),
                deps=tuple((key, r) for r in refs),
                lane=lane,
                on_done=lambda value, call=call: record(call, value),
                on_error=lambda error, call=call: record(call, error=error),
            )

    def _add(
        self,
        graph: TaskGraph,
        call: ToolCall,
        refs: Iterable[int],
        key: Hashable = None,
        deps: tuple[Hashable, ...] | None = None,
        **task: Any,
    ) -> None:
        """Add ``call`` as a task (key ``call.id`` and its references as the dependencies,
        unless ``key`` and ``deps`` are given), run with its references replaced."""
        refs = tuple(refs)
        tool = self.tools[call.tool]

        def run(*results: Observation) -> Observation:
            arguments = call.arguments
            if refs:
                arguments = substitute(arguments, dict(zip(refs, results, strict=True)))
            return _as_observation(call, tool(arguments))

        key = call.id if key is None else key
        graph.add(key, run, refs if deps is None else deps, timeout=self.timeout, **task)

    def _observations(self, outcome: Outcome, calls: list[ToolCall]) -> dict[int, Observation]:
        observations: dict[int, Observation] = {}
        for call in calls:
            if call.id in outcome.results:
                observations[call.id] = outcome.results[call.id]
            else:
                error = outcome.errors[call.id]
                observations[call.id] = _error_observation(call, error, observations)
        return observations


def _error_observation(
    call: ToolCall, error: BaseException, observations: Mapping[int, Observation]
) -> Observation:
    """What a call that did not answer shows the agent; ``observations`` holds those of the
    calls before it (a failed dependency's among them). A dependency is the call's id, or
    ``(plan key, id)`` for a plan scheduled on a shared graph."""
    if isinstance(error, _ToolFailed):
        return error.observation
    if isinstance(error, DependencyFailed):
        dependency = error.dependency
        dependency = dependency[1] if isinstance(dependency, tuple) else dependency
        failed = observations[dependency].error
        return error_observation(f"not run: task {dependency} failed: {failed}")
    if isinstance(error, TaskTimeout):
        return error_observation(f"tool {call.tool!r} timed out after {error.timeout:g} s")
    return error_observation(f"tool {call.tool!r} raised {type(error).__name__}: {error}")


class PlanStream:
    """A plan whose calls run while later ones still arrive (as a planner streams them).

    ``submit`` each call (checked against the calls before it: :class:`PlanError` refuses it,
    the plan goes on), then ``close``; ``results`` waits for every observation. As a context
    manager it closes on exit. The scheduler runs on a daemon thread of its own, which waits
    for :meth:`close`: close every stream.
    """

    def __init__(self, runner: PlanRunner):
        self._runner = runner
        self._graph = TaskGraph(runner.max_workers, streaming=True)
        self._calls: dict[int, ToolCall] = {}
        self._submitted = 0  # tasks submitted, refused ones too
        self._lock = threading.Lock()
        self._closed = False
        self._outcome: Outcome | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._schedule, name="plan", daemon=True)
        self._thread.start()

    def _schedule(self) -> None:
        try:
            self._outcome = self._graph.run()
        except BaseException as exc:  # noqa: BLE001 (handed to results())
            self._error = exc

    def submit(self, task: ToolCall | Mapping[str, Any]) -> ToolCall:
        """Add one call; it starts as soon as the calls it refers to have answered."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the plan is closed")
            self._submitted += 1
            call = ToolCall.of(task, self._submitted)
            reasons, refs = _problems(call, self._calls, self._runner.tools)
            if reasons:
                raise PlanError([(call.id, why) for why in reasons])
            self._calls[call.id] = call
            self._runner._add(self._graph, call, refs)
        return call

    def close(self) -> None:
        """No more calls: the plan ends when the submitted ones have."""
        with self._lock:
            self._closed = True
        self._graph.close()

    def results(self, timeout: float | None = None) -> dict[int, Observation]:
        """Each submitted call's observation by id, in submission order, once the plan is
        closed and done (:class:`TimeoutError` if that takes over ``timeout`` seconds)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the plan did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._outcome is not None
        return self._runner._observations(self._outcome, list(self._calls.values()))

    def __enter__(self) -> PlanStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
