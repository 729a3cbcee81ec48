"""The driver of the real-time agent: many queries' searches at once.

A query's search is a generator that yields requests (:mod:`inference_utils.toolbench.requests`)
and is sent their results; its return value is the search result. :func:`run_searches` keeps
up to ``concurrency`` of them active and answers their requests:

* ``Generate`` with a batched role backend (local models; :mod:`inference_utils.backends`):
  in rounds. A round first runs the tool calls of the active queries until each waits on a model
  (or is done), then makes one ``generate(role, prompts)`` call per role for the queries
  waiting on that role, in the order the queries started, so one forward pass serves several
  queries. Each prompt names its query's session, so the models prefill only what is new
  since that query's previous prompt for the role; a query's sessions are released when it
  ends. Which prompts share a call depends only on the searches, never on how fast the
  tools answer, so a run is reproducible.
* ``Generate`` with a backend that takes one request per call (role endpoints):
  concurrently, on the task graph, one lane per role of ``concurrency`` calls (as the
  static pipeline runs them).
* ``ToolRequest`` with a :class:`~inference_utils.toolclient.ToolClient`, concurrently on the
  task graph (a lane of ``concurrency`` calls); every call has the client's timeout, and a call
  that fails is an error observation for its search, never an exception.
* ``ToolPlan`` (several calls of one model output, ``--parallel_calls``) as tasks of that
  lane, on the same graph (:meth:`~inference_utils.dag.PlanRunner.schedule`), so a plan's
  calls count against the lane's cap like any other: each call runs through the same client
  as soon as the calls its arguments refer to (``$N``) have answered, each bounded by
  ``plan_timeout``; the search is sent ``{id: Observation}``, an error observation for every
  call when the plan cannot run. Each call counts as a tool call.

A search that raises fails its own query only: ``on_done`` gets the error and the other
queries go on. A role call that fails for good (an endpoint down after its retries, a model
that raises) is thrown into the searches that asked for it, which may handle it; if they do
not, those queries fail.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Generator, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from inference_utils.backends import RoleBackend
from inference_utils.dag import PlanError, PlanRunner, TaskGraph, ToolCall, error_observation
from inference_utils.toolbench.requests import Generate, ToolPlan, ToolRequest
from inference_utils.toolclient import ToolClient
from process_data.protocol import REQUEST_FAILED, ROLES, Observation

#: The order in which a round asks the roles: a planner's output may need the caller or the
#: summarizer in the same round.
ROLE_ORDER = ROLES
#: The task graph's lane of tool calls.
TOOLS_LANE = "tools"
#: The default bound on each call of a plan: a backstop, since the client bounds its own calls.
PLAN_TIMEOUT = 300.0
#: What the tool lane answers.
ToolWork = ToolRequest | ToolPlan

Search = Generator[Any, Any, Any]
#: ``on_done(key, result, error)``: ``error`` is ``None`` when the search returned ``result``.
OnDone = Callable[[Hashable, Any, BaseException | None], None]


@dataclass
class RunStats:
    """What a run asked of the models and the tools; read by a progress display."""

    llm_calls: int = 0  # Generate requests answered
    model_calls: int = 0  # generate() calls of local models (each serves a batch)
    tool_calls: int = 0
    finished: int = 0
    failed: int = 0
    seconds: float = 0.0
    llm_calls_by_role: dict[str, int] = field(default_factory=dict)
    # local models: prompt tokens computed, and those taken from a query's earlier KV cache
    prefilled_tokens: int | None = None
    reused_tokens: int | None = None

    def count_llm(self, role: str, n: int = 1) -> None:
        self.llm_calls += n
        self.llm_calls_by_role[role] = self.llm_calls_by_role.get(role, 0) + n


class SearchFailed(RuntimeError):
    """A search yielded something that is not a request."""


class _Searches:
    """The active searches, started in input order, each with the request it waits on.

    Only the scheduling thread touches the generators."""

    def __init__(
        self,
        searches: Iterable[tuple[Hashable, Search]],
        concurrency: int,
        on_done: OnDone | None,
        stats: RunStats,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._queue = iter(searches)
        self.concurrency = concurrency
        self.on_done = on_done
        self.stats = stats
        self.waiting: dict[Hashable, Any] = {}  # key → the request it waits on
        self.sessions: dict[Hashable, set[Hashable]] = {}  # key → the model sessions it used
        #: called with a search's model sessions when it ends
        self.release: Callable[[Iterable[Hashable]], None] | None = None
        self._gens: dict[Hashable, Search] = {}
        self._order: dict[Hashable, int] = {}  # key → start position

    def __bool__(self) -> bool:
        return bool(self._gens)

    def fill(self) -> list[Hashable]:
        """Start searches until ``concurrency`` are active; the keys of those that wait."""
        started = []
        while len(self._gens) < self.concurrency:
            item = next(self._queue, None)
            if item is None:
                break
            key, gen = item
            if key in self._gens or key in self._order:
                raise ValueError(f"two searches have the key {key!r}")
            self._gens[key] = gen
            self._order[key] = len(self._order)
            if self._step(key, next):
                started.append(key)
        return started

    def send(self, key: Hashable, value: Any) -> bool:
        """Send a result; whether the search waits on a new request (else it ended)."""
        return self._step(key, lambda g: g.send(value))

    def throw(self, key: Hashable, error: BaseException) -> bool:
        """Raise ``error`` in the search where it waits; whether it waits on a new request."""
        return self._step(key, lambda g: g.throw(error))

    def in_order(self, keys: Iterable[Hashable]) -> list[Hashable]:
        return sorted(keys, key=self._order.__getitem__)

    def _step(self, key: Hashable, advance: Callable[[Search], Any]) -> bool:
        gen = self._gens[key]
        self.waiting.pop(key, None)
        try:
            request = advance(gen)
        except StopIteration as stop:
            self._end(key, stop.value, None)
            return False
        except Exception as exc:  # a bug or a bad query: that query fails, the others go on
            self._end(key, None, exc)
            return False
        if not isinstance(request, Generate | ToolRequest | ToolPlan):
            gen.close()
            self._end(key, None, SearchFailed(f"a search yielded {type(request).__name__}"))
            return False
        self.waiting[key] = request
        if isinstance(request, Generate) and request.session is not None:
            self.sessions.setdefault(key, set()).add(request.session)
        return True

    def _end(self, key: Hashable, result: Any, error: BaseException | None) -> None:
        del self._gens[key]
        sessions = self.sessions.pop(key, None)
        if sessions and self.release is not None:
            self.release(sessions)
        if error is None:
            self.stats.finished += 1
        else:
            self.stats.failed += 1
        if self.on_done is not None:
            self.on_done(key, result, error)


def run_searches(
    searches: Mapping[Hashable, Search] | Iterable[tuple[Hashable, Search]],
    llm: RoleBackend,
    tools: ToolClient,
    concurrency: int = 8,
    on_done: OnDone | None = None,
    stats: RunStats | None = None,
    plan_timeout: float = PLAN_TIMEOUT,
) -> RunStats:
    """Run every search to its end; ``on_done`` is called as each ends (in the calling
    thread). ``llm`` is the role backend (see the module's docstring for how it is asked);
    ``plan_timeout`` bounds each call of a :class:`ToolPlan` (seconds)."""
    stats = stats if stats is not None else RunStats()
    items = searches.items() if isinstance(searches, Mapping) else searches
    active = _Searches(items, concurrency, on_done, stats)
    start = time.monotonic()
    tool_answers = _ToolAnswers(tools, plan_timeout)
    try:
        if llm.batched:
            _run_in_rounds(active, llm, tool_answers)
        else:
            _run_on_endpoints(active, llm, tool_answers)
    finally:
        stats.seconds += time.monotonic() - start
        prefill = getattr(llm, "stats", None)
        if prefill is not None:
            stats.prefilled_tokens = prefill.prefilled_tokens
            stats.reused_tokens = prefill.reused_tokens
    return stats


# -- local models: rounds --------------------------------------------------------------------


def _run_in_rounds(active: _Searches, models: RoleBackend, tools: _ToolAnswers) -> None:
    active.release = models.release
    active.fill()
    while active:
        _run_tools(active, tools)
        for role in ROLE_ORDER:
            keys = active.in_order(
                k for k, r in active.waiting.items() if isinstance(r, Generate) and r.role == role
            )
            if not keys:
                continue
            requests = [active.waiting[k].model_request() for k in keys]
            active.stats.model_calls += 1
            try:
                texts = [result.text for result in models.generate(role, requests)]
            except Exception as exc:
                for key in keys:
                    active.throw(key, exc)
            else:
                active.stats.count_llm(role, len(keys))
                for key, text in zip(keys, texts, strict=True):
                    active.send(key, text)
            active.fill()
        unknown = [k for k, r in active.waiting.items() if _role_of(r) not in (*ROLE_ORDER, None)]
        for key in unknown:
            active.throw(key, KeyError(f"no model for role {active.waiting[key].role!r}"))
        active.fill()


def _role_of(request: Any) -> str | None:
    return request.role if isinstance(request, Generate) else None


def _run_tools(active: _Searches, tools: _ToolAnswers) -> None:
    """Answer tool calls until every active search waits on a model or has ended."""
    pending = [k for k, r in active.waiting.items() if isinstance(r, ToolWork)]
    if not pending:
        return
    graph = TaskGraph(
        max_workers=active.concurrency,
        lanes={TOOLS_LANE: active.concurrency},
        keep_results=False,
    )
    count = itertools.count()

    def add(key: Hashable) -> None:
        tools.submit(graph, (key, next(count)), active.waiting[key], partial(answered, key))

    def answered(key: Hashable, result: Any) -> None:
        """Send the result; then the search's next tool call and new searches' first."""
        active.stats.tool_calls += _calls_in(active.waiting[key])
        keys = [key] if active.send(key, result) else []
        for k in keys + active.fill():
            if isinstance(active.waiting[k], ToolWork):
                add(k)

    for key in pending:
        add(key)
    graph.run()


class _ToolAnswers:
    """Answers the tool lane's requests: one call through the client, or a plan of calls."""

    def __init__(self, client: ToolClient, plan_timeout: float):
        if not plan_timeout > 0:
            raise ValueError(f"plan_timeout must be positive, not {plan_timeout!r}")
        self.client, self.plan_timeout = client, plan_timeout

    def submit(
        self,
        graph: TaskGraph,
        key: Hashable,
        request: ToolWork,
        answered: Callable[[Observation | dict[int, Observation]], None],
    ) -> None:
        """Add ``request`` to ``graph`` on the tools lane; ``answered`` gets what its search
        is sent: the observation of one call (a call that raises is a failed call's), or each
        call's observation of a plan, whose calls are tasks of the same lane (each as soon as
        the calls it refers to have answered, bounded by ``plan_timeout``). A plan that cannot
        run (a reference to a call that made no request, to itself or to a later one) is an
        error for every call, at once."""
        if not isinstance(request, ToolPlan):
            graph.add(
                key,
                lambda: self.call(request, request.tool_input),
                lane=TOOLS_LANE,
                on_done=answered,
                on_error=lambda error: answered(_failed_observation(error)),
            )
            return
        functions: dict[str, Any] = {}
        for planned in request.calls:
            route = planned.request  # one function name always has one route
            functions.setdefault(
                planned.function, lambda tool_input, r=route: self.call(r, tool_input)
            )
        calls = [ToolCall(c.id, c.function, c.request.tool_input) for c in request.calls]
        try:
            PlanRunner(functions, self.plan_timeout).schedule(
                graph, calls, key, TOOLS_LANE, answered
            )
        except PlanError as exc:
            text = f"the calls cannot run as a plan: {exc}"
            answered({c.id: error_observation(text) for c in calls})

    def call(self, request: ToolRequest, tool_input: dict) -> Observation:
        return self.client.call(request.category, request.tool_name, request.api_name, tool_input)


def _calls_in(request: ToolWork) -> int:
    return len(request.calls) if isinstance(request, ToolPlan) else 1


def _failed_observation(error: BaseException) -> Observation:
    """A tool call that raised, as the search sees a call that failed."""
    return Observation(f"request failed: {type(error).__name__}: {error}", "", REQUEST_FAILED)


# -- one request per call: everything concurrent ---------------------------------------------


def _run_on_endpoints(active: _Searches, backend: RoleBackend, tools: _ToolAnswers) -> None:
    lanes = {role: active.concurrency for role in ROLES}
    lanes[TOOLS_LANE] = active.concurrency
    graph = TaskGraph(max_workers=active.concurrency * len(lanes), lanes=lanes, keep_results=False)
    count = itertools.count()

    def schedule(keys: Iterable[Hashable]) -> None:
        for key in keys:
            request = active.waiting[key]
            task = (key, next(count))
            if isinstance(request, ToolWork):
                tools.submit(graph, task, request, partial(answered, key))
            else:  # a role the backend does not serve fails in its task, like any call
                graph.add(
                    task,
                    lambda r=request: _ask(backend, r),
                    lane=request.role,
                    on_done=partial(generated, key),
                    on_error=partial(threw, key),
                )

    def moved(key: Hashable, waits: bool) -> None:
        schedule(([key] if waits else []) + active.fill())

    def answered(key: Hashable, result: Any) -> None:
        active.stats.tool_calls += _calls_in(active.waiting[key])
        moved(key, active.send(key, result))

    def generated(key: Hashable, text: str) -> None:
        active.stats.count_llm(active.waiting[key].role)
        moved(key, active.send(key, text))

    def threw(key: Hashable, error: BaseException) -> None:
        moved(key, active.throw(key, error))

    schedule(active.fill())
    graph.run()


def _ask(backend: RoleBackend, request: Generate) -> str:
    """A role's output for one request (the backend picks the prompt or the messages it
    speaks, and cleans the output as the static pipeline does)."""
    return backend.generate(request.role, [request.model_request()])[0].text
