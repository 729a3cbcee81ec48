"""The real-time agent's driver and command: many queries' searches against real servers.

The driver tests run small searches written here (a chain of requests) against real HTTP
servers on 127.0.0.1: a tool server that holds each call until a number of calls are in
flight together (so concurrency is seen without timing), servers that fail in the ways tool
servers fail, and scripted OpenAI-compatible role endpoints. Local models are the real tiny
model, through a recorder that notes each ``generate`` call.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Generator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import free_port
from openai_gateway import Gateway, ScriptedEndpoint

from GLPFT.models import TINY_LLAMA
from inference_utils.endpoints import Endpoint, EndpointClient, EndpointError
from inference_utils.generation import GenerationSettings, HFModels
from inference_utils.toolbench.agent import RunStats, run_searches
from inference_utils.toolbench.requests import Generate, ToolRequest
from inference_utils.toolclient import REQUEST_FAILED, Observation, ToolClient

# -- servers ------------------------------------------------------------------------------------


class ToolStandIn(ThreadingHTTPServer):
    """A tool server that answers each call with its input once ``together`` calls are in
    flight at once (or after ``hold`` seconds), and notes the most it saw in flight. With
    ``mode`` it fails instead: ``500`` answers, ``garbage`` answers text that is not JSON."""

    daemon_threads = True

    def __init__(self, together: int = 1, hold: float = 20.0, mode: str = "ok"):
        super().__init__(("127.0.0.1", 0), _ToolHandler)
        self.together, self.hold, self.mode = together, hold, mode
        self.in_flight = self.most = self.calls = 0
        self.cond = threading.Condition()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/virtual"

    def __enter__(self) -> ToolStandIn:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _ToolHandler(BaseHTTPRequestHandler):
    server: ToolStandIn

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        srv = self.server
        with srv.cond:
            srv.calls += 1
            srv.in_flight += 1
            srv.most = max(srv.most, srv.in_flight)
            srv.cond.notify_all()
            srv.cond.wait_for(lambda: srv.most >= srv.together, timeout=srv.hold)
            srv.in_flight -= 1
        if srv.mode == "500":
            status, data = 500, b'{"detail": "boom"}'
        elif srv.mode == "garbage":
            status, data = 200, b"<html>not json"
        else:
            answer = {"error": "", "response": f"{body['api_name']}:{body['tool_input']}"}
            status, data = 200, json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def tool_client(url: str) -> ToolClient:
    return ToolClient(url, timeout=10, max_retries=1, backoff=0.01)


# -- searches written for the driver's tests ----------------------------------------------------


def chain(
    qid: int, roles: Sequence[str] = ("planner", "caller"), tool_calls: int = 1
) -> Generator[Generate | ToolRequest, object, list]:
    """``tool_calls`` steps of: each role in turn, then a tool call with what they wrote."""
    seen: list = []
    for step in range(tool_calls):
        for role in roles:
            prompt = f"Query {qid}, step {step}: the {role} says"
            seen.append((yield Generate(role, prompt, session=(qid, role))))
        observation = yield ToolRequest("Data", "stub", f"api{qid}", {"step": step})
        assert isinstance(observation, Observation)
        seen.append(observation)
    return seen


def tools_only(qid: int, calls: int = 2) -> Generator[ToolRequest, Observation, list]:
    seen = []
    for k in range(calls):
        seen.append((yield ToolRequest("Data", "stub", f"api{qid}", {"k": k})))
    return seen


class Recorder:
    """Real role models, with each ``generate`` call noted: (role, its prompts)."""

    def __init__(self, models: HFModels):
        self.models = models
        self.calls: list[tuple[str, list[str]]] = []

    def generate(self, role: str, prompts: Sequence[str]) -> list[str]:
        self.calls.append((role, list(prompts)))
        return self.models.generate(role, prompts)


@pytest.fixture(scope="module")
def tiny_models() -> HFModels:
    settings = GenerationSettings(max_new_tokens=4)
    return HFModels({r: TINY_LLAMA for r in ("planner", "caller", "summarizer")}, settings)


def collect() -> tuple[dict, callable]:
    done: dict = {}

    def on_done(key, result, error) -> None:
        assert key not in done
        done[key] = (result, error)

    return done, on_done


# -- local models: rounds -------------------------------------------------------------------------


def test_rounds_batch_each_role_across_queries(tiny_models: HFModels) -> None:
    with ToolStandIn(together=3) as server:
        recorder, done = Recorder(tiny_models), {}
        searches = {q: chain(q, tool_calls=2) for q in range(5)}
        stats = run_searches(
            searches, recorder, tool_client(server.url), 3, lambda k, r, e: done.update({k: r})
        )
        assert server.most == 3  # three queries' tool calls were in flight together
    assert sorted(done) == list(range(5))
    assert stats.finished == 5 and stats.failed == 0
    assert stats.llm_calls == 5 * 2 * 2 and stats.tool_calls == 5 * 2
    # each generate call serves every query waiting on its role, in the queries' order
    assert [len(prompts) for _, prompts in recorder.calls][:2] == [3, 3]
    assert all(len(prompts) <= 3 for _, prompts in recorder.calls)
    assert stats.model_calls == len(recorder.calls) < stats.llm_calls
    for role, prompts in recorder.calls:
        assert all(f"the {role} says" in p for p in prompts)
        qids = [int(p.split()[1].rstrip(",")) for p in prompts]
        assert qids == sorted(qids)
    # the outputs do not depend on how many queries run together
    alone = {}
    with ToolStandIn() as server:
        run_searches(
            {q: chain(q, tool_calls=2) for q in range(5)},
            tiny_models,
            tool_client(server.url),
            1,
            lambda k, r, e: alone.update({k: r}),
        )
    assert alone == done


def test_a_search_that_raises_fails_only_its_query(tiny_models: HFModels) -> None:
    def broken() -> Generator:
        yield Generate("planner", "Query 9, step 0: the planner says")
        raise RuntimeError("a bug in one query")

    def bad_request() -> Generator:
        yield "not a request"

    done, on_done = collect()
    searches = {0: chain(0), "broken": broken(), 1: chain(1), "bad": bad_request(), 2: chain(2)}
    with ToolStandIn() as server:
        stats = run_searches(searches, tiny_models, tool_client(server.url), 2, on_done)
    assert set(done) == set(searches)
    assert isinstance(done["broken"][1], RuntimeError)
    assert "yielded str" in str(done["bad"][1])
    assert all(done[q][1] is None and len(done[q][0]) == 3 for q in range(3))
    assert stats.finished == 3 and stats.failed == 2


def test_a_role_model_that_raises_is_thrown_into_its_searches(tiny_models: HFModels) -> None:
    class NoCaller:
        def generate(self, role: str, prompts: Sequence[str]) -> list[str]:
            if role == "caller":
                raise MemoryError("the caller ran out of memory")
            return tiny_models.generate(role, prompts)

    def careful() -> Generator:
        try:
            yield Generate("caller", "Query 5, step 0: the caller says")
        except MemoryError as exc:
            return f"handled: {exc}"

    done, on_done = collect()
    with ToolStandIn() as server:
        run_searches({0: chain(0), 5: careful()}, NoCaller(), tool_client(server.url), 2, on_done)
    assert isinstance(done[0][1], MemoryError)
    assert done[5] == ("handled: the caller ran out of memory", None)


# -- tools ----------------------------------------------------------------------------------------


def test_tool_calls_run_concurrently_and_never_more_than_asked(tiny_models: HFModels) -> None:
    done, on_done = collect()
    with ToolStandIn(together=4, hold=3) as server:
        stats = run_searches(
            {q: tools_only(q) for q in range(10)}, tiny_models, tool_client(server.url), 4, on_done
        )
        assert server.most == 4 and server.calls == 20
    assert stats.tool_calls == 20 and stats.llm_calls == 0
    for q in range(10):
        observations, error = done[q]
        assert error is None
        assert [o.response for o in observations] == [f"api{q}:{{'k': {k}}}" for k in range(2)]


@pytest.mark.parametrize("fault", ["down", "500", "garbage"])
def test_a_failing_tool_server_gives_error_observations(tiny_models, fault: str) -> None:
    done, on_done = collect()
    if fault == "down":
        url = f"http://127.0.0.1:{free_port()}/virtual"  # nothing listens there
        run_searches(
            {q: tools_only(q) for q in range(3)}, tiny_models, tool_client(url), 2, on_done
        )
    else:
        with ToolStandIn(mode=fault) as server:
            run_searches(
                {q: tools_only(q) for q in range(3)},
                tiny_models,
                tool_client(server.url),
                2,
                on_done,
            )
    for q in range(3):
        observations, error = done[q]
        assert error is None and len(observations) == 2
        assert all(o.status == REQUEST_FAILED and o.error for o in observations)


# -- endpoints ------------------------------------------------------------------------------------


def scripted(qids: Sequence[int], roles: Sequence[str], steps: int = 1) -> dict[str, str]:
    """A script answering every prompt of :func:`chain` with a text naming the prompt."""
    return {
        "system: " + f"Query {q}, step {s}: the {r} says": f"{r} {q}.{s}"
        for q in qids
        for s in range(steps)
        for r in roles
    }


def clients(urls: dict[str, str], **kw) -> dict[str, EndpointClient]:
    return {
        role: EndpointClient(Endpoint(url), timeout=10, max_retries=1, backoff=0.01, **kw)
        for role, url in urls.items()
    }


def test_endpoints_answer_every_role_concurrently() -> None:
    roles = ("planner", "caller", "summarizer")
    script = scripted(range(6), roles, steps=2)
    done, on_done = collect()
    with ScriptedEndpoint(script) as endpoint, ToolStandIn(together=3) as server:
        llm = clients({r: endpoint.url for r in roles})
        stats = run_searches(
            {q: chain(q, roles, tool_calls=2) for q in range(6)},
            llm,
            tool_client(server.url),
            3,
            on_done,
        )
        assert server.most == 3
    assert not endpoint.unknown
    assert stats.llm_calls == 6 * 2 * 3 and stats.tool_calls == 12
    assert stats.llm_calls_by_role == {r: 12 for r in roles}
    for q in range(6):
        seen, error = done[q]
        assert error is None
        texts = [x for x in seen if isinstance(x, str)]
        assert texts == [f"{r} {q}.{s}" for s in range(2) for r in roles]


def test_an_endpoint_that_fails_fails_the_queries_that_ask_it() -> None:
    script = scripted(range(4), ("planner",))
    done, on_done = collect()
    with ScriptedEndpoint(script) as planner, Gateway("caller", planner.url) as caller:
        caller.faults.fail_always = True
        with ToolStandIn() as server:
            llm = clients({"planner": planner.url, "caller": caller.url})
            searches = {q: chain(q, ("planner",)) for q in (0, 1)}
            searches |= {q: chain(q) for q in (2, 3)}
            run_searches(searches, llm, tool_client(server.url), 4, on_done)
    assert done[0][1] is None and done[1][1] is None
    assert isinstance(done[2][1], EndpointError) and isinstance(done[3][1], EndpointError)
    assert "503" in str(done[2][1])


def test_a_role_without_endpoint_fails_its_query() -> None:
    done, on_done = collect()
    with ScriptedEndpoint(scripted([0], ("planner",))) as planner, ToolStandIn() as server:
        run_searches(
            {0: chain(0, ("planner",)), 1: chain(1, ("backbone",))},
            clients({"planner": planner.url}),
            tool_client(server.url),
            2,
            on_done,
        )
    assert done[0][1] is None
    assert "no endpoint for role 'backbone'" in str(done[1][1])


def test_stats_accumulate_over_runs(tiny_models: HFModels) -> None:
    stats = RunStats()
    with ToolStandIn() as server:
        for _ in range(2):
            run_searches({0: tools_only(0)}, tiny_models, tool_client(server.url), 1, stats=stats)
    assert stats.tool_calls == 4 and stats.finished == 2
