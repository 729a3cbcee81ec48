"""The real-time agent's driver and command: many queries' searches against real servers.

The driver tests run small searches written here (a chain of requests) against real HTTP
servers on 127.0.0.1: a tool server that holds each call until a number of calls are in
flight together (so concurrency is seen without timing), servers that fail in the ways tool
servers fail, and scripted OpenAI-compatible role endpoints. Local models are the real tiny
model, through a recorder that notes each ``generate`` call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Generator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import REPO, SHARED, free_port, kill_when, read_json, start_server, stop_server
from fastapi import Request
from fastapi.responses import JSONResponse
from openai_gateway import Gateway, ScriptedEndpoint

from GLPFT.models import TINY_LLAMA
from inference_utils.agent.environment import TOOL_INPUT_ERROR
from inference_utils.agent.run import main as run_agent_main
from inference_utils.backends import ModelRequest, ModelResult
from inference_utils.driver import RunStats, run_searches
from inference_utils.endpoints import Endpoint, EndpointBackend, EndpointClient, EndpointError
from inference_utils.generation import GenerationSettings, HFModels
from inference_utils.search_requests import Generate, PlannedCall, ToolPlan, ToolRequest
from inference_utils.toolclient import ToolClient
from inference_utils.tooleval.convert import convert_dir
from process_data.protocol import FINISH, REQUEST_FAILED, Observation, format_action, parse_action
from process_data.toolbench.pipeline import Options, from_answer
from process_data.toolbench.stage1 import AnswerFile

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

    batched, concurrency = True, 1

    def __init__(self, models: HFModels):
        self.models = models
        self.calls: list[tuple[str, list[str]]] = []
        self.released: list[set] = []

    def generate(self, role: str, requests: Sequence[ModelRequest]) -> list[ModelResult]:
        self.calls.append((role, [r.prompt for r in requests]))
        return self.models.generate(role, requests)

    def release(self, sessions) -> None:
        self.released.append(set(sessions))
        self.models.release(sessions)


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
    assert 0 < stats.completion_tokens <= 4 * stats.llm_calls  # max_new_tokens=4
    assert stats.prompt_tokens > 10 * stats.llm_calls
    # each generate call serves every query waiting on its role, in the queries' order
    assert [len(prompts) for _, prompts in recorder.calls][:2] == [3, 3]
    assert all(len(prompts) <= 3 for _, prompts in recorder.calls)
    assert stats.model_calls == len(recorder.calls) < stats.llm_calls
    # each query's model sessions are released when it ends, so no cache is left behind
    assert sorted(recorder.released, key=sorted) == [
        {(q, "planner"), (q, "caller")} for q in range(5)
    ]
    assert len(tiny_models.sessions) == 0
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


def test_the_run_is_one_task_graph_and_its_rounds_batch_by_the_searches_alone(
    tiny_models: HFModels, monkeypatch
) -> None:
    """One graph serves every round (the model batches are tasks of its models lane), and a
    batch holds exactly the queries waiting on its role when the round's tools are done."""
    import inference_utils.driver as driver

    graphs = []

    class Counted(driver.TaskGraph):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            graphs.append(self)

    monkeypatch.setattr(driver, "TaskGraph", Counted)
    recorder = Recorder(tiny_models)
    with ToolStandIn() as server:
        run_searches(
            {q: chain(q, tool_calls=2) for q in range(5)}, recorder, tool_client(server.url), 3
        )
    assert len(graphs) == 1
    batches = [
        (role, [int(p.split()[1].rstrip(",")) for p in prompts]) for role, prompts in recorder.calls
    ]
    first, last = [0, 1, 2], [3, 4]
    assert batches == [
        ("planner", first),
        ("caller", first),
        ("planner", first),
        ("caller", first),
        ("planner", last),
        ("caller", last),
        ("planner", last),
        ("caller", last),
    ]


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
        batched, concurrency = True, 1

        def generate(self, role: str, requests: Sequence[ModelRequest]) -> list[ModelResult]:
            if role == "caller":
                raise MemoryError("the caller ran out of memory")
            return tiny_models.generate(role, requests)

        def release(self, sessions) -> None:
            tiny_models.release(sessions)

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


def clients(urls: dict[str, str], **kw) -> EndpointBackend:
    return EndpointBackend(
        {
            role: EndpointClient(Endpoint(url), timeout=10, max_retries=1, backoff=0.01, **kw)
            for role, url in urls.items()
        }
    )


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


# -- plans: several calls of one model output -----------------------------------------------------


def planned(*calls: PlannedCall) -> Generator[ToolPlan, dict, dict]:
    return (yield ToolPlan(calls))


def stub(api: str, tool_input: dict) -> ToolRequest:
    return ToolRequest("Data", "stub", api, tool_input)


@pytest.mark.parametrize("mode", ["rounds", "endpoints"])
def test_a_plans_calls_count_against_the_tools_lane(tiny_models, mode: str) -> None:
    """Two plans of six independent calls at concurrency 3: their calls share the tools lane
    (the same graph, not a graph of each plan's own), so no more than 3 are ever in flight
    (the stand-in holds each call 1 s and notes the most in flight), and 3 are."""
    plans = {
        q: planned(
            *(PlannedCall(k, f"a{k}_for_stub", stub(f"p{q}", {"k": k})) for k in range(1, 7))
        )
        for q in (0, 1)
    }
    done, on_done = collect()
    llm = tiny_models if mode == "rounds" else EndpointBackend({})
    with ToolStandIn(together=99, hold=1.0) as server:  # each call held 1 s
        stats = run_searches(plans, llm, tool_client(server.url), 3, on_done, plan_timeout=20)
        assert server.calls == 12 and server.most == 3
    assert stats.tool_calls == 12
    for q in (0, 1):
        observations, error = done[q]
        assert error is None and sorted(observations) == [1, 2, 3, 4, 5, 6]
        assert observations[4].response == f"p{q}:{{'k': 4}}"


@pytest.mark.parametrize("mode", ["rounds", "endpoints"])
def test_a_plan_runs_its_calls_with_references_replaced(tiny_models, mode: str) -> None:
    """``$1`` / ``${1}`` become the first call's response before the second call goes out; a
    plan that refers to a call it does not hold runs nothing, and every call of it gets an
    error observation that names the problem."""
    good = planned(
        PlannedCall(1, "a_for_stub", stub("a", {"k": 1})),
        PlannedCall(2, "b_for_stub", stub("b", {"x": "$1", "y": "got ${1}"})),
    )
    broken = planned(
        PlannedCall(1, "a_for_stub", stub("a", {"k": 2})),
        PlannedCall(3, "b_for_stub", stub("b", {"x": "$2"})),
    )
    done, on_done = collect()
    llm = tiny_models if mode == "rounds" else EndpointBackend({})
    with ToolStandIn() as server:
        client = tool_client(server.url)
        searches = {"good": good, "broken": broken}
        stats = run_searches(searches, llm, client, 2, on_done, plan_timeout=20)
        assert server.calls == 2  # both of the good plan, none of the broken one
    first = "a:{'k': 1}"
    second = "b:" + str({"x": first, "y": f"got {first}"})
    assert done["good"] == ({1: Observation("", first, 0), 2: Observation("", second, 0)}, None)
    observations, error = done["broken"]
    assert error is None and sorted(observations) == [1, 3]
    for observation in observations.values():
        assert observation.status == REQUEST_FAILED
        assert "refers to task 2, which is not in the plan" in observation.error
    assert stats.tool_calls == 4 and stats.finished == 2


# -- the command, end to end ----------------------------------------------------------------------

QUERIES = (
    SHARED / "stabletoolbench" / "solvable_queries" / "test_instruction" / "G1_instruction.json"
)
FIVE = "86143,87632,86084,88193,84845"  # the five G1 queries with the shortest prompts
SMOL = "smollm2-135m"
ROLE_FLAGS = [f"--{r}_model_name_or_path={SMOL}" for r in ("planner", "caller", "summarizer")]
BOUNDS = ["--max_new_tokens", "24", "--single_chain_max_step", "3", "--max_query_count", "8"]
# One thread per process: on a busy 2-core machine two threads wait on each other.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def toolserver(tmp_path_factory) -> str:
    """Our tool server on the StableToolBench G1 queries (cache, then offline simulator)."""
    tmp = tmp_path_factory.mktemp("toolserver")
    port = free_port()
    cmd = [sys.executable, "-m", "inference_utils.toolserver", "--queries", str(QUERIES)]
    cmd += ["--cache", str(tmp / "tools.sqlite"), "--port", str(port), "--log_level", "warning"]
    url = f"http://127.0.0.1:{port}"
    server = start_server(cmd, f"{url}/health", tmp / "server.log", timeout=90)
    yield f"{url}/virtual"
    stop_server(server)


def agent(out: Path, toolserver: str, *flags: str, ids: str = FIVE) -> list[str]:
    return [
        sys.executable,
        "-m",
        "inference_utils.agent.run",
        "--queries",
        str(QUERIES),
        "--toolserver",
        toolserver,
        "--output_dir",
        str(out),
        "--query_ids",
        ids,
        *flags,
    ]


def run(cmd: list[str], code: int = 0, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == code, proc.stderr[-3000:]
    return proc


def answers(out: Path, method: str) -> dict[str, str]:
    """The answer files of a run, by name, as text."""
    return {p.name: p.read_text() for p in sorted(out.glob(f"*_{method}.json"))}


def check_answers(out: Path, method: str, ids: str = FIVE) -> dict[str, dict]:
    """Every query has its answer file, in ToolBench's format: ToolEval's converter reads
    them all and process_data converts the answered ones."""
    files = {p.name.split("_")[0]: p for p in out.glob(f"*_{method}.json")}
    assert sorted(files) == sorted(ids.split(","))
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"
    loaded = {qid: read_json(p) for qid, p in files.items()}
    queries = {str(q["query_id"]): q for q in read_json(QUERIES)}
    for qid, answer in loaded.items():
        generation = answer["answer_generation"]
        assert generation["query"] == queries[qid]["query"]
        assert generation["function"][-1]["name"] == FINISH
        assert generation["query_count"] <= 8
        assert ("tree" if method.startswith("DFS") else "trys") in answer
    converted = convert_dir(out, method)
    assert sorted(converted) == sorted(files)
    for qid, answer in loaded.items():
        if answer["answer_generation"]["valid_data"]:
            group = "G1"
            result = from_answer(AnswerFile(str(files[qid]), group, qid), Options())
            assert not result.problems, result.problems
    return loaded


@pytest.fixture(scope="module")
def dfs_run(tmp_path_factory, toolserver: str) -> Path:
    out = tmp_path_factory.mktemp("dfs") / "answers"
    run(agent(out, toolserver, *ROLE_FLAGS, *BOUNDS, "--concurrency", "5"))
    return out


def test_multi_llm_dfs_end_to_end_and_a_rerun_skips_everything(dfs_run: Path, toolserver) -> None:
    loaded = check_answers(dfs_run, "DFS_woFilter_w2")
    summary = read_json(dfs_run / "summary.json")
    assert summary["queries"] == summary["run"] == 5 and summary["failed"] == 0
    assert summary["answered"] + summary["gave_up"] + summary["no_answer"] == 5
    # query_count counts steps, as ToolBench does; a multi-LLM step is one or two role calls
    steps = sum(a["answer_generation"]["query_count"] for a in loaded.values())
    assert steps <= summary["llm_calls"] <= 2 * steps
    assert summary["llm_calls"] == sum(summary["llm_calls_by_role"].values())
    assert summary["model_calls"] < summary["llm_calls"]  # batched across queries
    assert set(summary["llm_calls_by_role"]) <= {"planner", "caller", "summarizer"}
    # a query's later prompts start from the KV cache of its earlier ones (tool docs, history)
    assert summary["reused_tokens"] > 0 and summary["prefilled_tokens"] > 0
    before = answers(dfs_run, "DFS_woFilter_w2")
    proc = run(agent(dfs_run, toolserver, *ROLE_FLAGS, *BOUNDS))
    again = read_json(dfs_run / "summary.json")
    assert again["skipped"] == 5 and again["run"] == 0 and again["llm_calls"] == 0
    assert "5 done before" in proc.stderr
    assert answers(dfs_run, "DFS_woFilter_w2") == before


def test_answers_do_not_depend_on_concurrency(dfs_run: Path, toolserver, tmp_path) -> None:
    """Three of the queries one at a time give the files they got in a batch of five."""
    out = tmp_path / "one_at_a_time"
    ids = "86143,87632,86084"
    run(agent(out, toolserver, *ROLE_FLAGS, *BOUNDS, "--concurrency", "1", ids=ids))
    alone, batched = answers(out, "DFS_woFilter_w2"), answers(dfs_run, "DFS_woFilter_w2")
    assert len(alone) == 3 and alone == {name: batched[name] for name in alone}


@pytest.fixture(scope="module")
def cot_run(tmp_path_factory, toolserver: str) -> Path:
    out = tmp_path_factory.mktemp("cot") / "answers"
    run(agent(out, toolserver, *ROLE_FLAGS, *BOUNDS, "--method", "CoT@1", "--concurrency", "5"))
    return out


def test_cot_killed_mid_run_resumes_to_the_same_answers(
    cot_run: Path, toolserver, tmp_path
) -> None:
    check_answers(cot_run, "CoT@1")
    out = tmp_path / "killed"
    cmd = agent(out, toolserver, *ROLE_FLAGS, *BOUNDS, "--method", "CoT@1", "--concurrency", "1")
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    kill_when(proc, lambda: bool(list(out.glob("*_CoT@1.json"))))
    kept = answers(out, "CoT@1")
    assert 1 <= len(kept) < 5
    assert not list(out.glob(".*.tmp")), "a partial answer was left behind"
    assert all(json.loads(text) for text in kept.values())
    proc = run(cmd)
    assert f"{len(kept)} done before" in proc.stderr
    resumed = answers(out, "CoT@1")
    assert {name: resumed[name] for name in kept} == kept  # finished answers were kept
    assert resumed == answers(cot_run, "CoT@1")  # and the run ends as an uninterrupted one


def test_single_llm_mode(toolserver, tmp_path) -> None:
    out = tmp_path / "backbone"
    ids = "86143,87632,86084"
    run(agent(out, toolserver, f"--backbone_model_name_or_path={SMOL}", *BOUNDS, ids=ids))
    check_answers(out, "DFS_woFilter_w2", ids)
    summary = read_json(out / "summary.json")
    assert set(summary["llm_calls_by_role"]) == {"backbone"} and summary["failed"] == 0


# -- the command with scripted role endpoints -----------------------------------------------------


class RoleEndpoint(Gateway):
    """An OpenAI-compatible server (completions and chat) playing one role by a rule:
    ``rule(text)`` gives the output for a prompt (for chat, the messages as JSON text).
    Every prompt it is asked is kept; prompts holding ``fail_on`` are answered 503."""

    def __init__(self, name: str, rule):
        super().__init__(name, "http://127.0.0.1:9")
        self.rule = rule
        self.prompts: list = []
        self.fail_on: str | None = None

    async def _handle(self, path: str, request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse({"object": "list", "data": [{"id": self.name}]})
        body = await request.json()
        self.posts += 1
        f = self.faults
        if f.fail_always or self.posts <= f.fail_first:
            return JSONResponse({"error": {"message": "injected"}}, status_code=f.fail_status)
        if self.fail_on is not None and self.fail_on in json.dumps(body):
            return JSONResponse({"error": {"message": "injected"}}, status_code=503)
        if "prompt" in body:
            self.prompts.append(body["prompt"])
            text = self.rule(body["prompt"])
            return JSONResponse({"choices": [{"index": 0, "text": text}]})
        self.prompts.append(body["messages"])
        text = self.rule(json.dumps(body["messages"]))
        message = {"role": "assistant", "content": text}
        return JSONResponse({"choices": [{"index": 0, "message": message}]})


BARCODE = "87632"  # "retrieving details for the barcode '543216789'", one API: code(code)
CALL = format_action("code_for_barcode_monster", json.dumps({"code": "543216789"}))


def planner_rule(prompt: str) -> str:
    """Call the API first; conclude once an observation is in the history."""
    if "observation: " in prompt or '"role": "tool"' in prompt:
        return "The barcode details are in.\n Next: conclusion."
    return "I should look the barcode up.\n Next: caller."


def summarizer_rule(prompt: str) -> str:
    """An answer quoting the start of the last observation."""
    seen = prompt.rsplit("observation: ", 1)[-1].split("assistant: ")[0]
    return "Details of barcode 543216789: " + seen[:80]


@pytest.fixture
def role_endpoints():
    with (
        RoleEndpoint("planner", planner_rule) as planner,
        RoleEndpoint("caller", lambda prompt: CALL) as caller,
        RoleEndpoint("summarizer", summarizer_rule) as summarizer,
    ):
        yield {"planner": planner, "caller": caller, "summarizer": summarizer}


def endpoint_flags(endpoints: dict, *extra: str) -> list[str]:
    flags = [f"--{role}_endpoint={e.url}" for role, e in endpoints.items()]
    return [*flags, "--max_retries", "1", "--request_timeout", "20", *extra]


@pytest.mark.parametrize("method", ["DFS_woFilter_w2", "CoT@1"])
def test_endpoint_roles_answer_a_query_through_a_real_tool_call(
    role_endpoints, toolserver, tmp_path, method: str
) -> None:
    out = tmp_path / "answers"
    code = run_agent_main(
        agent(out, toolserver, *endpoint_flags(role_endpoints), "--method", method, ids=BARCODE)[3:]
    )
    assert code == 0
    answer = check_answers(out, method, BARCODE)[BARCODE]
    generation = answer["answer_generation"]
    assert generation["valid_data"] and generation["query_count"] == 2  # two steps
    chain = generation["train_messages"][-1]
    call, observation, finish = chain[2], chain[3], chain[4]
    assert call["function_call"] == {
        "name": "code_for_barcode_monster",
        "arguments": json.dumps({"code": "543216789"}),
    }
    assert observation["role"] == "function" and '"error": ""' in observation["content"]
    final = json.loads(finish["function_call"]["arguments"])
    assert final["return_type"] == "give_answer"
    assert final["final_answer"].startswith("Details of barcode 543216789: ")
    assert len(final["final_answer"]) > len("Details of barcode 543216789: ")
    if method.startswith("DFS"):
        assert generation["finish_type"] == "give_answer"
    # process_data trains each role on exactly the prompt the agent sent it
    path = out / f"{BARCODE}_{method}.json"
    result = from_answer(AnswerFile(str(path), "G1", BARCODE), Options())
    for role, endpoint in role_endpoints.items():
        inputs = ["system: " + json.loads(s)["input"] for s in result.roles[role]]
        assert inputs == endpoint.prompts, role
    summary = read_json(out / "summary.json")
    assert summary["answered"] == 1 and summary["tool_calls"] == 1


def test_chat_endpoints_get_the_chat_format(role_endpoints, toolserver, tmp_path) -> None:
    out = tmp_path / "answers"
    flags = endpoint_flags(role_endpoints, "--endpoint_api", "chat")
    assert run_agent_main(agent(out, toolserver, *flags, "--method", "CoT@1", ids=BARCODE)[3:]) == 0
    answer = check_answers(out, "CoT@1", BARCODE)[BARCODE]
    assert answer["answer_generation"]["valid_data"]
    path = out / f"{BARCODE}_CoT@1.json"
    result = from_answer(AnswerFile(str(path), "G1", BARCODE), Options(fmt="chat"))
    for role, endpoint in role_endpoints.items():
        inputs = [json.loads(s)["messages"][:-1] for s in result.roles[role]]
        assert inputs == endpoint.prompts, role


def test_a_tool_server_that_is_down_gives_error_observations(role_endpoints, tmp_path) -> None:
    out = tmp_path / "answers"
    down = f"http://127.0.0.1:{free_port()}/virtual"
    flags = endpoint_flags(role_endpoints, "--tool_timeout", "5", "--tool_retries", "1")
    assert run_agent_main(agent(out, down, *flags, "--method", "CoT@1", ids=BARCODE)[3:]) == 0
    chain = read_json(out / f"{BARCODE}_CoT@1.json")["answer_generation"]["train_messages"][-1]
    assert "request failed" in json.loads(chain[3]["content"])["error"]


def test_a_failing_role_endpoint_fails_its_queries_and_a_rerun_retries_them(
    role_endpoints, toolserver, tmp_path, capsys
) -> None:
    out = tmp_path / "answers"
    ids = f"{BARCODE},86143"
    role_endpoints["summarizer"].fail_on = "requires barcode information"  # one query's text
    cmd = agent(out, toolserver, *endpoint_flags(role_endpoints), "--method", "CoT@1", ids=ids)
    assert run_agent_main(cmd[3:]) == 3
    summary = read_json(out / "summary.json")
    assert summary["failed"] == 1 and list(summary["failures"]) == [BARCODE]
    assert "EndpointError" in summary["failures"][BARCODE]
    assert "query 87632 failed" in capsys.readouterr().err
    assert [p.name for p in out.glob("*_CoT@1.json")] == ["86143_CoT@1.json"]
    role_endpoints["summarizer"].fail_on = None
    assert run_agent_main(cmd[3:]) == 0
    summary = read_json(out / "summary.json")
    assert summary["skipped"] == 1 and summary["run"] == 1 and summary["answered"] == 1


def test_on_model_error_continue_goes_on_as_toolbench_does(
    role_endpoints, toolserver, tmp_path
) -> None:
    """``--on_model_error continue``: the failed summarizer call becomes an assistant message
    with the error's text, as ToolBench's ChatGPT client returns it, and the search goes on
    (here to its depth cap, since the summarizer keeps failing); the query is not failed."""
    out = tmp_path / "answers"
    role_endpoints["summarizer"].fail_on = "requires barcode information"
    flags = endpoint_flags(role_endpoints, "--on_model_error", "continue")
    cmd = agent(out, toolserver, *flags, "--method", "CoT@1", ids=BARCODE)
    assert run_agent_main(cmd[3:]) == 0
    summary = read_json(out / "summary.json")
    assert summary["failed"] == 0 and summary["no_answer"] == 1
    assert summary["model_errors_continued"] >= 2  # it went on after the first one
    chain = read_json(out / f"{BARCODE}_CoT@1.json")["trys"][0]["chain"]
    thoughts = [n["description"] for n in chain if n["node_type"] == "Thought"]
    assert "HTTP 503" in thoughts[1], thoughts  # after the call, the summarizer's error


def test_a_folder_of_query_files_answers_each_file_in_its_folder(
    role_endpoints, toolserver, tmp_path
) -> None:
    """Query ids repeat across ToolBench's query files: each file's answers go to a folder
    named after it."""
    barcode = next(q for q in read_json(QUERIES) if str(q["query_id"]) == BARCODE)
    folder = tmp_path / "queries"
    folder.mkdir()
    for name in ("G1_instruction", "G1_tool"):
        (folder / f"{name}.json").write_text(json.dumps([barcode]))
    out = tmp_path / "answers"
    flags = endpoint_flags(role_endpoints, "--method", "CoT@1")
    cmd = agent(out, toolserver, *flags, ids=BARCODE)[3:]
    cmd[cmd.index("--queries") + 1] = str(folder)
    assert run_agent_main(cmd) == 0
    for name in ("G1_instruction", "G1_tool"):
        answer = read_json(out / name / f"{BARCODE}_CoT@1.json")
        assert answer["answer_generation"]["valid_data"]
    assert read_json(out / "summary.json")["answered"] == 2
    cmd[cmd.index("--query_ids") + 1] = "424242"
    with pytest.raises(SystemExit, match="no query with id 424242"):
        run_agent_main(cmd)


SECOND_CALL = format_action("code_for_barcode_monster", json.dumps({"code": "${1}"}))


def tool_server_requests(toolserver: str) -> int:
    """The requests the tool server has answered (its ``/stats``)."""
    stats = httpx.get(toolserver.rsplit("/", 1)[0] + "/stats", timeout=10)
    return stats.json()["requests"]


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel_calls", "off"])
def test_parallel_calls_run_every_call_of_a_caller_output(
    role_endpoints, toolserver, tmp_path, parallel: bool
) -> None:
    """The caller writes two calls, the second taking the first's response (``${1}``). With
    --parallel_calls both reach the tool server and the answer file holds them as two
    consecutive calls; without it the output is one call as ToolBench reads it, whose input
    (the rest of the text) is not JSON, so no request goes out."""
    output = CALL + "\n" + SECOND_CALL
    role_endpoints["caller"].rule = lambda prompt: output
    out = tmp_path / "answers"
    flags = endpoint_flags(role_endpoints, "--method", "CoT@1")
    flags += ["--parallel_calls"] if parallel else []
    before = tool_server_requests(toolserver)
    assert run_agent_main(agent(out, toolserver, *flags, ids=BARCODE)[3:]) == 0
    sent = tool_server_requests(toolserver) - before
    answer = check_answers(out, "CoT@1", BARCODE)[BARCODE]
    assert answer["answer_generation"]["valid_data"]
    chain = answer["answer_generation"]["train_messages"][-1]
    calls = [m["function_call"] for m in chain if m["role"] == "assistant"]
    observations = [json.loads(m["content"]) for m in chain if m["role"] == "function"]
    assert calls[-1]["name"] == FINISH
    summary = read_json(out / "summary.json")
    if parallel:
        assert sent == 2 and summary["tool_calls"] == 2
        assert calls[:-1] == [
            dict(zip(("name", "arguments"), parse_action(t), strict=True))
            for t in (CALL, SECOND_CALL)
        ]
        assert [o["error"] for o in observations] == ["", ""]
        assert "parallel_calls" not in (out / f"{BARCODE}_CoT@1.json").read_text()
    else:
        assert sent == 0 and summary["tool_calls"] == 0
        name, arguments = parse_action(output)
        assert calls[:-1] == [{"name": name, "arguments": arguments}]
        assert observations == [{"error": TOOL_INPUT_ERROR, "response": ""}]
