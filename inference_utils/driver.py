"""The one driver: many searches at once, on one task graph.

A search is a generator that yields requests (:mod:`inference_utils.search_requests`) and is
sent their results; its return value is the search result. A real-time agent's query is a
search (ToolBench's CoT or DFSDT), and so is a static step (the planner, then the role it
routes to). :func:`run_searches` keeps up to ``concurrency`` of them active and answers
their requests:

* ``Generate`` with a batched role backend (local models; :mod:`inference_utils.backends`):
  in rounds. A round first runs the tool calls of the active queries until each waits on a model
  (or is done), then makes one ``generate(role, prompts)`` call per role for the queries
  waiting on that role, in the order the queries started, so one forward pass serves several
  queries (a task of the models lane, one at a time). Each prompt names its query's
  session, so the models prefill only what is new since that query's previous prompt for the
  role; a query's sessions are released when it ends. Which prompts share a call depends only
  on the searches, never on how fast the tools answer, so a run is reproducible.
* ``Generate`` with a backend that takes one request per call (role endpoints):
  concurrently, one lane per role of ``lane_width`` calls.
* ``ToolRequest`` with a :class:`~inference_utils.toolclient.ToolClient`, concurrently on the
  task graph (a lane of ``lane_width`` calls); every call has the client's timeout, and a call
  that fails is an error observation for its search, never an exception.
* ``ToolPlan`` (several calls of one model output, ``--parallel_calls``) as tasks of that
  lane, on the same graph (:meth:`~inference_utils.dag.PlanRunner.schedule`), so a plan's
  calls count against the lane's cap like any other: each call runs through the same client
  as soon as the calls its arguments refer to (``$N``) have answered, each bounded by
  ``plan_timeout``; the search is sent ``{id: Observation}``, an error observation for every
  call when the plan cannot run. Each call counts as a tool call.
* ``StreamedPlan`` (an LLMCompiler planner): the planner's output is read line by line as the
  backend streams it (a task of the role's lane reads up to the next line end), and each
  call starts on the tools lane the moment the calls it refers to have answered, while the
  planner is still writing. With a batched backend the plan is written by the role's batch
  (not streamed) and its calls run before the round goes on. The search is sent a
  ``PlanReply`` once the plan has ended and every call has answered; a call that refers to
  no earlier call, that its route refuses, or whose dependency failed gets an error
  observation, so a bad plan never waits or crashes. A planner that fails mid-plan is thrown
  into the search once the calls it started have answered.

A search that raises fails its own query only: ``on_done`` gets the error and the other
queries go on. A role call that fails for good (an endpoint down after its retries, a model
that raises) is thrown into the searches that asked for it, which may handle it; if they do
not, those queries fail.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Generator, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from inference_utils.backends import ModelResult, RoleBackend
from inference_utils.dag import (
    PlanError,
    PlanRunner,
    TaskGraph,
    ToolCall,
    error_observation,
    substitute,
)
from inference_utils.search_requests import (
    Generate,
    PlanReply,
    StreamedPlan,
    ToolPlan,
    ToolRequest,
)
from inference_utils.toolclient import ToolClient
from process_data.protocol import (
    REQUEST_FAILED,
    ROLES,
    Observation,
    PlanCall,
    PlanReader,
    brace_references,
    plan_references,
)

#: The order in which a round asks the roles: a planner's output may need the caller or the
#: summarizer in the same round.
ROLE_ORDER = ROLES
#: The task graph's lane of tool calls.
TOOLS_LANE = "tools"
#: A batched backend's lane: one batch at a time.
MODELS_LANE = "models"
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
    # the prompt and completion tokens of the LLM calls, as the backends count them (an
    # endpoint that reports no usage adds nothing)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # local models: prompt tokens computed, and those taken from a query's earlier KV cache
    prefilled_tokens: int | None = None
    reused_tokens: int | None = None

    def count_llm(self, role: str, results: Sequence[ModelResult]) -> None:
        self.llm_calls += len(results)
        self.llm_calls_by_role[role] = self.llm_calls_by_role.get(role, 0) + len(results)
        self.prompt_tokens += sum(r.prompt_tokens or 0 for r in results)
        self.completion_tokens += sum(r.completion_tokens or 0 for r in results)


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
        if not isinstance(request, Generate | ToolRequest | ToolPlan | StreamedPlan):
            gen.close()
            self._end(key, None, SearchFailed(f"a search yielded {type(request).__name__}"))
            return False
        self.waiting[key] = request
        if isinstance(request, Generate | StreamedPlan) and request.session is not None:
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
    tools: ToolClient | None,
    concurrency: int = 8,
    on_done: OnDone | None = None,
    stats: RunStats | None = None,
    plan_timeout: float = PLAN_TIMEOUT,
    lane_width: int | None = None,
    tool_lane_width: int | None = None,
) -> RunStats:
    """Run every search to its end; ``on_done`` is called as each ends (in the calling
    thread). ``llm`` is the role backend (see the module's docstring for how it is asked);
    ``tools`` answers tool requests (``None``: searches that make none, as the static
    pipeline's steps; one that does fails); ``plan_timeout`` bounds each call of a
    :class:`ToolPlan` (seconds); ``lane_width`` caps the calls at once of each role and of the
    tools (default: ``concurrency``), ``tool_lane_width`` those of the tools alone (a plan's
    calls run in parallel even when one query runs at a time)."""
    stats = stats if stats is not None else RunStats()
    items = searches.items() if isinstance(searches, Mapping) else searches
    active = _Searches(items, concurrency, on_done, stats)
    start = time.monotonic()
    answers = _ToolAnswers(tools, plan_timeout) if tools is not None else None
    try:
        width = lane_width or concurrency
        _Driver(active, llm, answers, width, tool_lane_width or width).run()
    finally:
        stats.seconds += time.monotonic() - start
        prefill = getattr(llm, "stats", None)
        if prefill is not None:
            stats.prefilled_tokens = prefill.prefilled_tokens
            stats.reused_tokens = prefill.reused_tokens
    return stats


class _Driver:
    """Answers the active searches' requests as tasks of one task graph, for the whole run.

    Everything happens in the graph's scheduling thread (its ``on_done`` / ``on_error``
    callbacks), so only that thread touches the searches. With a batched backend the run
    goes in rounds (see the module's docstring): a round's tool calls, then one batch per role
    on the models lane, one batch at a time; a tool request made while the round asks the
    models waits for the next round's tool phase, so which prompts share a batch never depends
    on timing. Otherwise every request is a task as soon as it is made.
    """

    def __init__(
        self,
        active: _Searches,
        llm: RoleBackend,
        tools: _ToolAnswers | None,
        lane_width: int,
        tool_lane_width: int,
    ):
        if lane_width < 1 or tool_lane_width < 1:
            raise ValueError("lane widths must be at least 1")
        self.active, self.llm, self.tools = active, llm, tools
        self.rounds = llm.batched
        lanes = {TOOLS_LANE: tool_lane_width}
        if self.rounds:
            lanes[MODELS_LANE] = 1
        else:
            lanes.update({role: lane_width for role in ROLES})
        self.graph = TaskGraph(max_workers=sum(lanes.values()), lanes=lanes, keep_results=False)
        self.tasks = itertools.count()
        self.tool_work = 0  # tool requests on the graph, not yet answered
        self.batch = False  # rounds: a batch is on the graph
        self.next_role: int | None = None  # rounds: None in the tool phase, else a ROLE_ORDER index

    def run(self) -> None:
        self.active.release = self.llm.release
        self.after([])
        self.graph.run()

    def after(self, keys: list[Hashable]) -> None:
        """These searches wait on new requests: schedule what may start, start new searches,
        and in rounds go on when nothing is in flight."""
        for key in [*keys, *self.active.fill()]:
            request = self.active.waiting[key]
            if isinstance(request, ToolWork):
                if not self.rounds or self.next_role is None:
                    self.submit_tool(key, request)
            elif isinstance(request, StreamedPlan) and not self.rounds:
                _PlanRun(self, key, request).read_next()
            elif not self.rounds:  # a role the backend does not serve fails in its task
                self.graph.add(
                    (key, next(self.tasks)),
                    partial(_ask, self.llm, request),
                    lane=request.role,
                    on_done=partial(self.generated, key),
                    on_error=partial(self.threw, key),
                )
        if self.rounds and not self.tool_work and not self.batch:
            self.next_batch()

    def submit_tool(self, key: Hashable, request: ToolWork) -> None:
        if self.tools is None:
            self.graph.add(
                (key, next(self.tasks)),
                partial(_no_tools, request),
                on_error=partial(self.threw, key),
            )
            return
        self.tool_work += 1
        self.tools.submit(self.graph, (key, next(self.tasks)), request, partial(self.answered, key))

    def answered(self, key: Hashable, result: Any) -> None:
        self.tool_work -= 1
        self.active.stats.tool_calls += _calls_in(self.active.waiting[key])
        self.after([key] if self.active.send(key, result) else [])

    def generated(self, key: Hashable, result: ModelResult) -> None:
        request = self.active.waiting[key]
        self.active.stats.count_llm(request.role, [result])
        self.after([key] if self.active.send(key, _answer(request, result)) else [])

    def threw(self, key: Hashable, error: BaseException) -> None:
        self.after([key] if self.active.throw(key, error) else [])

    # -- rounds --------------------------------------------------------------------------

    def next_batch(self) -> None:
        """Nothing is in flight: start the round's next piece of work (the held tool calls,
        or the next role's batch), or a new round."""
        active = self.active
        while active:
            if self.next_role is None:
                held = [k for k, r in active.waiting.items() if isinstance(r, ToolWork)]
                if held:
                    for key in held:
                        self.submit_tool(key, active.waiting[key])
                    return
                self.next_role = 0
            while self.next_role < len(ROLE_ORDER):
                role = ROLE_ORDER[self.next_role]
                self.next_role += 1
                keys = active.in_order(k for k, r in active.waiting.items() if _role_of(r) == role)
                if keys:
                    self.submit_batch(role, keys)
                    return
            self.next_role = None
            unknown = [k for k, r in active.waiting.items() if _role_of(r) not in (*ROLES, None)]
            for key in unknown:
                active.throw(key, KeyError(f"no model for role {active.waiting[key].role!r}"))
            active.fill()

    def submit_batch(self, role: str, keys: list[Hashable]) -> None:
        requests = [self.active.waiting[k].model_request() for k in keys]
        self.batch = True
        self.active.stats.model_calls += 1
        self.graph.add(
            (MODELS_LANE, next(self.tasks)),
            partial(self.llm.generate, role, requests),
            lane=MODELS_LANE,
            on_done=partial(self.batch_done, role, keys),
            on_error=partial(self.batch_failed, keys),
        )

    def batch_done(self, role: str, keys: list[Hashable], results: list[ModelResult]) -> None:
        self.batch = False
        if len(results) != len(keys):
            self.batch_failed(keys, ValueError(f"{len(results)} outputs for {len(keys)} prompts"))
            return
        self.active.stats.count_llm(role, results)
        self.batch = True  # until every output is handed on: no batch starts meanwhile
        sent = []
        for key, result in zip(keys, results, strict=True):
            request = self.active.waiting[key]
            if isinstance(request, StreamedPlan):  # written whole: its calls run now
                _PlanRun(self, key, request).written(result.text)
            elif self.active.send(key, _answer(request, result)):
                sent.append(key)
        self.batch = False
        self.after(sent)

    def batch_failed(self, keys: list[Hashable], error: BaseException) -> None:
        self.batch = False
        self.after([k for k in keys if self.active.throw(k, error)])


def _answer(request: Generate, result: ModelResult) -> str | ModelResult:
    """What a search that asked ``request`` is sent: the text, or the whole result."""
    return result if request.full else result.text


def _role_of(request: Any) -> str | None:
    return request.role if isinstance(request, Generate | StreamedPlan) else None


#: A plan's stream once it has ended.
_ENDED = object()


class _PlanRun:
    """One :class:`StreamedPlan` in flight, driven from the graph's scheduling thread.

    The planner's output comes in line by line (:meth:`read_next`, a task of the role's lane
    per piece of text up to a line end) or whole (:meth:`written`, from a batch). Each call
    it holds is routed, then started on the tools lane once the calls it refers to have
    answered: a call waits in :attr:`waiting` under each reference still unanswered, so an
    answer wakes exactly its dependents. The search gets its :class:`PlanReply` when the
    plan has ended and no call is left."""

    def __init__(self, driver: _Driver, key: Hashable, request: StreamedPlan):
        self.driver, self.key, self.request = driver, key, request
        self.reader = PlanReader()
        self.parts: list[str] = []
        self.calls: list[PlanCall] = []
        self.answers: dict[int, Observation] = dict(request.known)  # by id, earlier rounds too
        self.seen: set[int] = set(request.known)  # ids written so far
        self.own: dict[int, Observation] = {}  # this plan's calls' observations, by position
        # a call waiting on answers: (position, call, request, its references, those pending)
        self.waiting: dict[int, list[tuple[int, PlanCall, ToolRequest, set[int], set[int]]]] = {}
        self.running = 0  # calls started, not answered
        self.ended = False
        self.error: BaseException | None = None
        self.stream: Any = None
        self.counted = False  # the planner's call is in the run's stats
        self.result: ModelResult | None = None  # the stream's value: its token counts

    # -- the planner's text ----------------------------------------------------------------

    def written(self, text: str) -> None:
        """The whole plan at once (a batched backend's output, counted with its batch)."""
        self.counted = True
        self.parts.append(text)
        self.take(self.reader.feed(text) + self.reader.close())
        self.end()

    def read_next(self) -> None:
        driver = self.driver
        driver.graph.add(
            (self.key, next(driver.tasks)),
            self.next_lines,
            lane=self.request.role,
            on_done=self.got,
            on_error=self.failed,
        )

    def next_lines(self) -> str | None:
        """The streamed text up to and including the next line end (in a worker), or
        ``None`` at the end of the stream (whose value, the whole result with its token
        counts, is kept)."""
        if self.stream is None:
            request = self.request.model_request()
            self.stream = self.driver.llm.stream(self.request.role, request)
        pieces = []
        while self.stream is not _ENDED:
            try:
                piece = next(self.stream)
            except StopIteration as stop:  # its value is there once only
                self.stream, self.result = _ENDED, stop.value
                break
            pieces.append(piece)
            if "\n" in piece:
                break
        return "".join(pieces) if pieces else None

    def got(self, text: str | None) -> None:
        """A piece of the plan (the text after ``join`` is read to the stream's end, which
        the stop string bounds, but not parsed)."""
        if text is not None:
            self.parts.append(text)
            self.take(self.reader.feed(text))
            self.read_next()
        else:
            self.take(self.reader.close())
            self.end()

    def failed(self, error: BaseException) -> None:
        self.error = error
        self.end()

    def end(self) -> None:
        self.ended = True
        if not self.counted:
            self.counted = True
            text = "".join(self.parts)
            result = self.result if isinstance(self.result, ModelResult) else ModelResult(text)
            self.driver.active.stats.count_llm(self.request.role, [result])
        self.maybe_done()

    # -- the calls -------------------------------------------------------------------------

    def take(self, calls: list[PlanCall]) -> None:
        for call in calls:
            position = len(self.calls)
            self.calls.append(call)
            first = call.id not in self.seen
            self.seen.add(call.id)
            if call.is_join:
                continue
            if not first:
                text = f"task {call.id}: a duplicate id (ids go on from {max(self.seen) + 1})"
                self.answer(position, call, error_observation(text))
                continue
            refs = plan_references((call.args, call.kwargs))
            later = sorted(r for r in refs if r >= call.id or r not in self.seen)
            if later:
                text = f"task {call.id} refers to task {later[0]}, which is not an earlier task"
                self.answer(position, call, error_observation(text))
                continue
            routed = self.request.route(call)
            if isinstance(routed, Observation):
                self.answer(position, call, routed)
                continue
            pending = {r for r in refs if r not in self.answers}
            if pending:
                entry = (position, call, routed, refs, pending)
                for ref in pending:
                    self.waiting.setdefault(ref, []).append(entry)
            else:
                self.start(position, call, routed, refs)

    def start(self, position: int, call: PlanCall, request: ToolRequest, refs: set[int]) -> None:
        failed = next((r for r in sorted(refs) if self.answers[r].error), None)
        if failed is not None:
            text = f"not run: task {failed} failed: {self.answers[failed].error}"
            self.answer(position, call, error_observation(text))
            return
        tool_input = substitute(brace_references(request.tool_input), self.answers)
        driver = self.driver
        if driver.tools is None:
            self.answer(position, call, error_observation("this run has no tool server"))
            return
        self.running += 1
        driver.tool_work += 1
        driver.active.stats.tool_calls += 1
        work = ToolRequest(request.category, request.tool_name, request.api_name, tool_input)
        driver.tools.submit(
            driver.graph,
            (self.key, next(driver.tasks)),
            work,
            partial(self.answered, position, call),
        )

    def answered(self, position: int, call: PlanCall, observation: Observation) -> None:
        self.running -= 1
        self.driver.tool_work -= 1
        self.answer(position, call, observation)
        self.maybe_done()

    def answer(self, position: int, call: PlanCall, observation: Observation) -> None:
        self.own[position] = observation
        if call.id in self.answers:  # a duplicate id: the first call keeps it
            return
        self.answers[call.id] = observation
        for other_position, other, request, refs, pending in self.waiting.pop(call.id, []):
            pending.discard(call.id)
            if not pending:
                self.start(other_position, other, request, refs)

    def maybe_done(self) -> None:
        if not self.ended or self.running:
            return
        for entries in self.waiting.values():  # can only wait on a call that never ran
            for position, call, *_ in entries:
                if position not in self.own:
                    self.own[position] = error_observation(f"task {call.id}: not run")
        self.waiting.clear()
        driver, key = self.driver, self.key
        if self.error is not None:
            driver.after([key] if driver.active.throw(key, self.error) else [])
            return
        observations = tuple(self.own.get(i) for i in range(len(self.calls)))
        reply = PlanReply("".join(self.parts), tuple(self.calls), observations)
        driver.after([key] if driver.active.send(key, reply) else [])


def _ask(backend: RoleBackend, request: Generate) -> ModelResult:
    """A role's output for one request (the backend picks the prompt or the messages it
    speaks, and cleans the output as the static pipeline does)."""
    return backend.generate(request.role, [request.model_request()])[0]


def _no_tools(request: ToolWork) -> None:
    raise SearchFailed(f"a search made a tool request ({type(request).__name__}) with no tools")


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
