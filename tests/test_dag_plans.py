"""Plans of tool calls on the task graph: references and their substitution, validation,
faults that become error observations, streaming, concurrency, and a real tool server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from inference_utils.dag import (
    PlanError,
    PlanRunner,
    ToolCall,
    references,
    substitute,
    validate_plan,
)
from inference_utils.toolclient import ToolClient
from process_data.protocol import REQUEST_FAILED, Observation

# Every fault is bounded: a hung tool waits on ``release`` (set when the test ends), and a run
# must return well within BOUND seconds of its SHORT timeout, which the tools that do not hang
# share (so it leaves them room on a loaded machine).
BOUND, SHORT = 10.0, 0.5


@pytest.fixture
def release():
    event = threading.Event()
    yield event
    event.set()  # lets the abandoned threads finish


class Recorder:
    """Tools that record the arguments they were called with."""

    def __init__(self) -> None:
        self.calls: dict[str, list[dict]] = {}
        self.lock = threading.Lock()

    def tool(self, name: str, answer=None):
        def call(arguments: dict):
            with self.lock:
                self.calls.setdefault(name, []).append(arguments)
            return answer(arguments) if callable(answer) else answer

        return call


def task(ident, tool, **arguments) -> dict:
    return {"id": ident, "tool": tool, "arguments": arguments}


def bounded_run(runner: PlanRunner, plan: list) -> dict[int, Observation]:
    start = time.monotonic()
    observations = runner.run(plan)
    assert time.monotonic() - start < BOUND
    return observations


# -- references -------------------------------------------------------------------------------


def test_whole_references_are_typed_and_text_references_are_text() -> None:
    rec = Recorder()
    tools = {
        "city": rec.tool("city", {"id": 42, "tags": ["old", "big"]}),
        "count": rec.tool("count", 7),
        "name": rec.tool("name", "Paris"),
        "use": rec.tool("use", "ok"),
    }
    plan = [
        task(1, "city"),
        task(2, "count"),
        task(3, "name"),
        task(4, "use", city="$1", n="${2}", name="$3", text="city ${1}, ${3} has ${2} parks"),
    ]
    observations = bounded_run(PlanRunner(tools), plan)
    assert observations[1] == Observation("", {"id": 42, "tags": ["old", "big"]}, 0)
    (args,) = rec.calls["use"]
    assert args["city"] == {"id": 42, "tags": ["old", "big"]}  # the dict, not its text
    assert args["n"] == 7 and type(args["n"]) is int
    assert args["name"] == "Paris"
    assert args["text"] == 'city {"id": 42, "tags": ["old", "big"]}, Paris has 7 parks'
    assert observations[4].response == "ok"


def test_a_bare_dollar_number_inside_text_is_literal_and_no_dependency() -> None:
    # Task 2's text holds "$1": were it a dependency, task 2 would wait for task 1, which
    # waits for task 2 to have run: the run would end in task 1's timeout instead.
    ran = threading.Event()
    rec = Recorder()
    tools = {
        "wait": lambda args: "task 2 ran" if ran.wait(timeout=BOUND) else "task 2 never ran",
        "say": rec.tool("say", lambda args: ran.set() or args["text"]),
    }
    plan = [task(1, "wait"), task(2, "say", text="apples cost $1 each, $2 a pair")]
    observations = bounded_run(PlanRunner(tools, timeout=BOUND * 2), plan)
    assert observations[1].response == "task 2 ran"
    assert observations[2].response == "apples cost $1 each, $2 a pair"
    assert references({"text": "apples cost $1 each"}) == set()


def test_a_bare_dollar_number_with_no_such_task_is_still_text() -> None:
    rec = Recorder()
    plan = [task(7, "say", text="costs $1", price="$ 1", braces="{$1}")]
    observations = bounded_run(PlanRunner({"say": rec.tool("say", "said")}), plan)
    assert observations[7].error == ""
    assert rec.calls["say"] == [{"text": "costs $1", "price": "$ 1", "braces": "{$1}"}]


def test_references_in_nested_lists_and_dicts_keys_are_not_references() -> None:
    rec = Recorder()
    tools = {"a": rec.tool("a", [1, 2]), "b": rec.tool("b", {"k": "v"}), "use": rec.tool("use")}
    arguments = {
        "outer": {"list": ["$1", {"deep": "${2}", "$1": "key stays"}, "x ${1} y"], "n": 3},
        "pairs": [["$2", "$1"]],
    }
    plan = [task(1, "a"), task(2, "b"), {"id": 3, "tool": "use", "arguments": arguments}]
    observations = bounded_run(PlanRunner(tools), plan)
    assert observations[3] == Observation("", None, 0)
    (args,) = rec.calls["use"]
    assert args == {
        "outer": {"list": [[1, 2], {"deep": {"k": "v"}, "$1": "key stays"}, "x [1, 2] y"], "n": 3},
        "pairs": [[{"k": "v"}, [1, 2]]],
    }
    assert references(arguments) == {1, 2}
    assert arguments["outer"]["list"][0] == "$1"  # the plan itself is left as it was


def test_substitute_and_references_on_their_own() -> None:
    results = {10: Observation("", {"a": 1}, 0), 2: Observation("", "txt", 0)}
    assert references(["$10", "${2}", "$2x", "a${10}b", "$", "${}", "$-1"]) == {10, 2}
    assert substitute(["$10", "${2}", "$2x", "a${10}b"], results) == [
        {"a": 1},
        "txt",
        "$2x",
        'a{"a": 1}b',
    ]


def test_arguments_may_come_as_json_text_and_tasks_as_tool_calls() -> None:
    rec = Recorder()
    tools = {"a": rec.tool("a", 5), "b": rec.tool("b")}
    plan = [ToolCall(1, "a", {}), {"id": 2, "tool": "b", "arguments": '{"x": "$1"}'}]
    bounded_run(PlanRunner(tools), plan)
    assert rec.calls["b"] == [{"x": 5}]


# -- validation -------------------------------------------------------------------------------

TOOLS = {"a": lambda args: 1, "b": lambda args: 2}


@pytest.mark.parametrize(
    ("plan", "who", "why"),
    [
        ([task(1, "nope")], 1, "unknown tool 'nope'"),
        ([{"tool": "a", "arguments": {}}], "#1", "no id"),
        ([task(1, "a"), {"id": "2", "tool": "a"}], "#2", "integer"),
        ([task(1, "a"), task(1, "b")], 1, "a duplicate id"),
        ([task(1, "a", x="$2"), task(2, "b")], 1, "refers to task 2, which comes later"),
        ([task(1, "a", x="${9}")], 1, "refers to task 9, which is not in the plan"),
        ([task(1, "a", x="$1")], 1, "refers to itself ($1): a cycle"),
        ([task(1, "a", x="$2"), task(2, "b", y="$1")], 1, "in a cycle: 1 → 2 → 1"),
        ([{"id": 1, "tool": "a", "arguments": [1]}], 1, "must be a JSON object, not list"),
        ([{"id": 1, "tool": "a", "arguments": "{oops"}], 1, "the arguments are not JSON"),
        ([{"id": 1, "tool": 3}], 1, "the tool must be a name"),
        (["1. a()"], "#1", "a task is an object, not str"),
    ],
    ids=[
        "unknown-tool",
        "missing-id",
        "bad-id",
        "duplicate-id",
        "forward-reference",
        "no-such-task",
        "self-reference",
        "cycle",
        "arguments-not-object",
        "arguments-not-json",
        "tool-not-a-name",
        "task-not-object",
    ],
)
def test_invalid_plans_are_refused_before_anything_runs(plan, who, why) -> None:
    ran: list[str] = []
    tools = {name: (lambda args, n=name: ran.append(n)) for name in TOOLS}
    with pytest.raises(PlanError) as info:
        PlanRunner(tools).run(plan)
    assert any(w == who and why in r for w, r in info.value.problems), info.value.problems
    assert f"task {who}: " in str(info.value) and why in str(info.value)
    assert isinstance(info.value, ValueError)
    assert ran == []


def test_every_problem_of_a_plan_is_reported_at_once() -> None:
    plan = [task(1, "a", x="$3"), task(1, "zzz"), {"tool": "a"}]
    with pytest.raises(PlanError) as info:
        validate_plan(plan, TOOLS)
    assert [who for who, _ in info.value.problems] == ["#3", 1, 1, 1]
    assert validate_plan([task(5, "a"), task(2, "b", x="$5")], TOOLS) == [
        ToolCall(5, "a", {}),
        ToolCall(2, "b", {"x": "$5"}),
    ]  # ids need not be consecutive nor ordered, only references must point back


# -- faults -----------------------------------------------------------------------------------


def boom(args):
    raise ConnectionError("tool server down")


def test_a_tool_that_raises_becomes_an_error_observation_and_fails_its_dependents() -> None:
    rec = Recorder()
    tools = {"boom": boom, "use": rec.tool("use", "used"), "fine": rec.tool("fine", "fine")}
    plan = [
        task(1, "boom"),
        task(2, "use", x="$1"),
        task(3, "use", x="${2} and more"),
        task(4, "fine"),
        task(5, "use", x="$4"),
    ]
    observations = bounded_run(PlanRunner(tools), plan)
    assert list(observations) == [1, 2, 3, 4, 5]
    assert observations[1].error == "tool 'boom' raised ConnectionError: tool server down"
    assert observations[1].status == REQUEST_FAILED and observations[1].response == ""
    assert observations[2].error.startswith("not run: task 1 failed: tool 'boom' raised")
    assert observations[3].error.startswith("not run: task 2 failed: not run: task 1 failed")
    assert observations[4] == Observation("", "fine", 0)
    assert observations[5] == Observation("", "used", 0)
    assert rec.calls["use"] == [{"x": "fine"}]  # the dependents of task 1 never ran
    assert json.loads(observations[2].text)["error"].startswith("not run")


def test_a_hung_tool_times_out_without_holding_up_the_run(release) -> None:
    threads: list[threading.Thread] = []

    def hang(args):
        threads.append(threading.current_thread())
        release.wait(timeout=30)
        return "too late"

    rec = Recorder()
    tools = {"hang": hang, "use": rec.tool("use", "used"), "fine": rec.tool("fine", 1)}
    plan = [task(1, "hang"), task(2, "use", x="$1"), task(3, "fine"), task(4, "use", x="$3")]
    observations = bounded_run(PlanRunner(tools, timeout=SHORT, max_workers=1), plan)
    assert observations[1].error == "tool 'hang' timed out after 0.5 s"
    assert observations[1].status == REQUEST_FAILED
    assert observations[2].error == "not run: task 1 failed: tool 'hang' timed out after 0.5 s"
    assert observations[3].response == 1 and observations[4].response == "used"
    assert threads[0].is_alive() and threads[0].daemon  # abandoned, not joined


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (object(), "returned object, not JSON"),
        ({"a", "set"}, "returned set, not JSON"),
        ({"nan": float("nan")}, "returned dict, not JSON"),
        (float("inf"), "returned float, not JSON"),
        (Observation("", {1, 2}, 0), "returned a broken answer"),
        (Observation(None, "x", 0), "returned a broken answer"),  # type: ignore[arg-type]
    ],
    ids=["object", "set", "nan-inside", "infinity", "observation-with-a-set", "error-not-text"],
)
def test_a_tool_that_returns_garbage_becomes_an_error_observation(answer, why) -> None:
    rec = Recorder()
    tools = {"junk": lambda args: answer, "use": rec.tool("use")}
    observations = bounded_run(PlanRunner(tools), [task(1, "junk"), task(2, "use", x="$1")])
    assert observations[1] == Observation(f"tool 'junk' {why}", "", REQUEST_FAILED)
    assert observations[2].error.startswith("not run: task 1 failed")
    assert "use" not in rec.calls


def test_an_observation_with_an_error_is_kept_as_it_is_and_fails_its_dependents() -> None:
    limited = Observation("Rate limit per minute error...", "", 10)
    rec = Recorder()
    tools = {"limited": lambda args: limited, "use": rec.tool("use")}
    observations = bounded_run(PlanRunner(tools), [task(1, "limited"), task(2, "use", x="$1")])
    assert observations[1] is limited
    assert observations[2].error == "not run: task 1 failed: Rate limit per minute error..."


def test_bad_runner_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        PlanRunner(TOOLS, timeout=0)


# -- concurrency and streaming ----------------------------------------------------------------


def test_independent_calls_run_concurrently() -> None:
    barrier = threading.Barrier(4, timeout=BOUND)  # breaks unless all four are in at once

    def meet(args):
        return barrier.wait()

    plan = [task(i, "meet") for i in range(1, 5)]
    observations = bounded_run(PlanRunner({"meet": meet}, max_workers=4), plan)
    assert sorted(o.response for o in observations.values()) == [0, 1, 2, 3]


def test_calls_start_while_the_plan_is_still_arriving() -> None:
    started = threading.Event()
    rec = Recorder()
    tools = {"first": lambda args: started.set() or {"token": "t-1"}, "use": rec.tool("use", 2)}
    with PlanRunner(tools).start() as plan:
        plan.submit(task(1, "first"))
        # the rest of the plan has not arrived, and task 1 runs already
        assert started.wait(timeout=BOUND)
        plan.submit(task(2, "use", auth="$1"))
        with pytest.raises(PlanError, match="task 3: refers to task 4, which is not an earlier"):
            plan.submit(task(3, "use", x="$4"))  # refused; the plan goes on
        with pytest.raises(PlanError, match="task 2: a duplicate id"):
            plan.submit(task(2, "use"))
        with pytest.raises(PlanError, match="unknown tool 'later'"):
            plan.submit(task(5, "later"))
        plan.submit(task(6, "use", n="$2"))
    observations = plan.results(timeout=BOUND)
    assert list(observations) == [1, 2, 6]
    assert rec.calls["use"] == [{"auth": {"token": "t-1"}}, {"n": 2}]
    with pytest.raises(RuntimeError, match="closed"):
        plan.submit(task(7, "use"))


def test_a_streamed_plan_waits_for_close_and_bounds_its_results(release) -> None:
    tools = {"hang": lambda args: release.wait(timeout=30), "fine": lambda args: "ok"}
    plan = PlanRunner(tools, timeout=SHORT).start()
    plan.submit(task(1, "fine"))
    with pytest.raises(TimeoutError, match="did not finish"):
        plan.results(timeout=0.2)  # not closed yet: it waits for more calls
    plan.submit(task(2, "hang"))
    plan.close()
    observations = plan.results(timeout=BOUND)
    assert observations[1].response == "ok"
    assert observations[2].error == "tool 'hang' timed out after 0.5 s"


# -- a real tool server -----------------------------------------------------------------------


class ToolApi(ThreadingHTTPServer):
    """ToolBench's tool API on 127.0.0.1: ``cities`` finds a city, ``weather`` echoes its
    input, ``broken`` answers ToolBench's error for an API that does not work."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ToolApiHandler)
        self.inputs: dict[str, list] = {}
        self.url = f"http://127.0.0.1:{self.server_address[1]}/virtual"


class _ToolApiHandler(BaseHTTPRequestHandler):
    server: ToolApi

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        api = body["api_name"]
        self.server.inputs.setdefault(api, []).append(body["tool_input"])
        if api == "cities":
            answer = {"error": "", "response": {"id": 2988507, "name": "Paris"}}
        elif api == "weather":
            answer = {"error": "", "response": {"forecast": "sunny", "for": body["tool_input"]}}
        else:
            answer = {"error": "API not working error...", "response": ""}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def tool_api():
    server = ToolApi()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=BOUND)


def test_a_plan_through_the_tool_client_and_a_real_server(tool_api) -> None:
    with ToolClient(tool_api.url, timeout=BOUND, max_retries=0) as client:

        def api(name):
            return lambda args: client.call("Weather", "meteo", name, args)

        tools = {name: api(name) for name in ("cities", "weather", "broken")}
        plan = [
            task(1, "cities", q="Paris"),
            task(2, "weather", city="$1", note="for ${1}"),
            task(3, "broken"),
            task(4, "weather", city="$3"),
        ]
        observations = bounded_run(PlanRunner(tools), plan)
    assert tool_api.inputs["weather"] == [
        {"city": {"id": 2988507, "name": "Paris"}, "note": 'for {"id": 2988507, "name": "Paris"}'}
    ]
    assert observations[2].response["forecast"] == "sunny"
    assert observations[3] == Observation("API not working error...", "", 6)
    assert observations[4].error == "not run: task 3 failed: API not working error..."
