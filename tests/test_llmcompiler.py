"""LLMCompiler mode (``run_agent --agent llmcompiler``): its grammar, its streamed plans on the
task graph, and each defect of SqueezeAILab/LLMCompiler (at a00c9d3) as a bounded test.

The planner is a real OpenAI-compatible server (FastAPI on 127.0.0.1) that streams a
scripted plan as server-sent events, in the pieces and with the pauses a test asks for; the
tools are a real HTTP tool server that echoes each call's input."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from conftest import SHARED, read_json
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from openai_gateway import Gateway
from test_agent_run import BARCODE, SMOL, ToolStandIn, agent, toolserver  # noqa: F401
from test_agent_run import run as run_command

from inference_utils.agent.llmcompiler import CONFIGS, CompilerConfig
from inference_utils.agent.run import main as run_agent_main
from inference_utils.tooleval.convert import convert_dir
from process_data.protocol import (
    END_OF_PLAN,
    JOIN_DESCRIPTION,
    PlanReader,
    llmcompiler_prompt,
    plan_arguments,
    read_joiner,
    read_plan,
)

QUERIES = (
    SHARED / "stabletoolbench" / "solvable_queries" / "test_instruction" / "G1_instruction.json"
)
CODE = "code_for_barcode_monster"  # query 87632's one function: code(code)


# -- the grammar ------------------------------------------------------------------------------

PLAN = f'Thought: look both up\n1. {CODE}("1")\n2. {CODE}("2")\n3. {CODE}($1)\n4. join()\n'


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_a_plan_reads_the_same_whatever_the_chunking(size: int) -> None:
    """Their ``StreamingGraphParser.ingest_token`` splits a token at its first newline only
    (``prefix, suffix = token.split("\\n", 1)``), so a piece holding ``1…\\n2…\\n3…\\n`` loses
    task 3. Ours reads every line of every piece."""
    reader = PlanReader()
    calls = []
    for i in range(0, len(PLAN), size):
        calls += reader.feed(PLAN[i : i + size])
    calls += reader.close()
    assert [(c.id, c.name, c.args) for c in calls] == [
        (1, CODE, ("1",)),
        (2, CODE, ("2",)),
        (3, CODE, ("$1",)),
        (4, "join", ()),
    ]
    assert calls[0].thought == "look both up" and calls[1].thought is None


@pytest.mark.timeout(60)
def test_reading_a_plan_is_linear() -> None:
    """A 2 MB line fed one character at a time: a reader that joins its buffer on every
    piece would copy terabytes; ours keeps the pieces and joins them once."""
    reader = PlanReader()
    for ch in f'1. {CODE}("' + "x" * 2_000_000 + '")':
        reader.feed(ch)
    (call,) = reader.close()
    assert len(call.args[0]) == 2_000_000


def test_plan_lines_ours_reads_and_theirs_drops() -> None:
    # their ACTION_PATTERN is \d+\. (\w+)\((.*)\): names with dots or hyphens do not parse,
    # and their ParallelQA examples' lines without a closing parenthesis are dropped
    calls = read_plan('1. my.tool-v2("a", k=2)\n2. math("x", ["$1"]\n3. join()\n4. late()')
    assert [(c.id, c.name, c.args, c.kwargs) for c in calls] == [
        (1, "my.tool-v2", ("a",), {"k": 2}),
        (2, "math", ("x", ["$1"]), {}),
        (3, "join", (), {}),
    ]  # nothing after join, as their parser stops there
    # their _parse_llm_compiler_action_args: literal_eval, else the text as one argument
    assert plan_arguments("search($1), ${2}") == (("search($1), ${2}",), {})
    assert plan_arguments("$1, ${2}, 'it costs $3'") == (("$1", "$2", "it costs $3"), {})
    assert plan_arguments("__import__('os').system('x')") == (("__import__('os').system('x')",), {})


def test_the_joiner_answer_is_never_cut() -> None:
    """Their ``_parse_joinner_output``: ``answer = ans[ans.find("(") + 1 : ans.find(")")]``,
    so ``Finish(5 (rounded))`` answers ``5 (rounded`` and a multi-line answer loses its
    later lines."""
    decision = read_joiner("Thought: done\nAction: Finish(5 (rounded) and\n6 (exact))\n")
    assert decision.answer == "5 (rounded) and\n6 (exact)" and not decision.replan
    assert read_joiner("Thought: t\nAction: Replan(the price)").replan
    assert read_joiner("no action at all").answer == ""


def test_the_planner_prompt_is_theirs() -> None:
    """Their ``generate_llm_compiler_prompt``: the actions numbered, ``join`` last, the
    guidelines, then the examples."""
    prompt = llmcompiler_prompt(["a(x: str) -> dict:\n - A."], "EXAMPLES", replan=False)
    assert prompt.startswith(
        "Given a user query, create a plan to solve it with the utmost parallelizability. "
        "Each plan should comprise an action from the following 2 types:\n"
        "1. a(x: str) -> dict:\n - A.\n2. " + JOIN_DESCRIPTION + "\n\nGuidelines:\n"
    )
    assert " - Each action MUST have a unique ID, which is strictly increasing.\n" in prompt
    assert f"Say '{END_OF_PLAN}' after you call join\n" in prompt
    assert prompt.endswith("Here are some examples:\n\nEXAMPLES")
    assert "Previous Plan" in llmcompiler_prompt([], "E", replan=True)


@pytest.mark.parametrize("name", ["toolbench", "custom"])
def test_shipped_configs_load_and_their_examples_parse(name: str) -> None:
    config = CompilerConfig.load(CONFIGS / name)
    for example in filter(str.strip, config.planner_examples.split("###")):
        lines = [x for x in example.strip().splitlines()[1:] if not x.startswith("Thought:")]
        calls = read_plan(example.replace(END_OF_PLAN, ""))
        assert len(calls) == len(lines) and calls[-1].is_join, example


def test_a_bad_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        CompilerConfig.load(tmp_path)
    (tmp_path / "config.yaml").write_text("planner_examples: x\njoiner_prompt: ''\n")
    with pytest.raises(ValueError, match="'joiner_prompt' must be non-empty"):
        CompilerConfig.load(tmp_path)


# -- a streaming planner ------------------------------------------------------------------------


class PlannerEndpoint(Gateway):
    """Completions: a planner prompt gets ``plan``, streamed as ``pieces`` (each ``(text,
    seconds to wait before it)``), then ``[DONE]`` (or a broken connection with
    ``break_after``); any other prompt (the joiner's) gets the next of ``joins``."""

    def __init__(self, plans: list[list[tuple[str, float]]], joins: list[str]):
        super().__init__("planner", "http://127.0.0.1:9")
        self.plans, self.joins = list(plans), list(joins)
        self.break_after: int | None = None
        self.ended: list[float] = []  # when each plan's stream ended
        self.prompts: list[str] = []
        self.reject_stream_options = False
        self.bodies: list[dict] = []

    async def _handle(self, path: str, request: Request):
        if request.method == "GET":
            return JSONResponse({"object": "list", "data": [{"id": "planner"}]})
        body = await request.json()
        prompt = body.get("prompt") or json.dumps(body.get("messages"))
        self.prompts.append(prompt)
        if "create a plan" not in prompt:
            text = self.joins.pop(0)
            return JSONResponse({"choices": [{"index": 0, "text": text}]})
        self.bodies.append(body)
        if self.reject_stream_options and "stream_options" in body:
            message = "Unrecognized request argument supplied: stream_options"
            return JSONResponse({"error": {"message": message}}, status_code=400)
        pieces = self.plans.pop(0)
        usage = {"prompt_tokens": 1000, "completion_tokens": 30, "total_tokens": 1030}
        with_usage = (body.get("stream_options") or {}).get("include_usage")

        async def events():
            for n, (text, wait) in enumerate(pieces):
                await asyncio.sleep(wait)
                if self.break_after is not None and n >= self.break_after:
                    raise RuntimeError("the planner broke off")
                yield f"data: {json.dumps({'choices': [{'index': 0, 'text': text}]})}\n\n"
            self.ended.append(time.monotonic())
            if with_usage:  # OpenAI's last chunk: no choices, the usage
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


class TimedTools(ToolStandIn):
    """The echoing tool server, answering at once."""

    def __init__(self, mode: str = "ok"):
        super().__init__(together=1, hold=0.0, mode=mode)


def run(out: Path, planner: PlannerEndpoint, tools: str, *flags: str) -> int:
    argv = ["--agent", "llmcompiler", "--queries", str(QUERIES), "--toolserver", tools]
    argv += ["--output_dir", str(out), "--query_ids", BARCODE, "--backbone_endpoint"]
    argv += [planner.url, "--max_retries", "0", "--request_timeout", "20", "--tool_retries", "0"]
    return run_agent_main([*argv, *flags])


def answer_of(out: Path) -> dict:
    return read_json(out / f"{BARCODE}_LLMCompiler.json")


def calls_of(answer: dict) -> list[tuple[str, str]]:
    """The (arguments, observation) of each tool call in the answer file's chain (not
    ``Finish``)."""
    chain = answer["trys"][0]["chain"]
    return [
        (n["description"], n["observation"])
        for before, n in zip(chain, chain[1:], strict=False)
        if n["node_type"] == "Action Input" and before["description"] != "Finish"
    ]


@pytest.mark.timeout(60)
def test_calls_start_while_the_plan_streams_and_the_answer_is_whole(tmp_path: Path) -> None:
    plan = [
        (f'1. {CODE}("111")\n', 0.0),
        (f"2. {CODE}($1)\n", 1.5),  # written 1.5 s after call 1: call 1 runs meanwhile
        (f"3. join()\n{END_OF_PLAN}\nignored", 0.0),
    ]
    join = "Thought: both found\nAction: Finish(code 111 (checked) and its echo)"
    with PlannerEndpoint([plan], [join]) as planner, TimedTools() as tools:
        assert run(tmp_path, planner, tools.url) == 0
        assert tools.calls == 2
    answer = answer_of(tmp_path)
    (first, o1), (second, o2) = calls_of(answer)
    assert json.loads(first) == {"code": "111"}
    assert json.loads(second) == {"code": "$1"}  # as planned; it ran with call 1's response
    first_response = json.loads(o1)["response"]
    assert json.loads(o2)["response"] == "code:" + str({"code": first_response})
    final = json.loads(answer["answer_generation"]["final_answer"])
    assert final["final_answer"] == "code 111 (checked) and its echo"
    assert answer["answer_generation"]["valid_data"]
    summary = read_json(tmp_path / "summary.json")
    assert summary["answered"] == 1 and summary["llm_calls"] == 2 and summary["tool_calls"] == 2
    # the streamed plan's tokens, as the server reports them at the end of the stream (the
    # joiner's answer reports none here)
    assert summary["prompt_tokens"] == 1000 and summary["completion_tokens"] == 30


@pytest.mark.timeout(60)
def test_a_server_that_refuses_stream_options_is_asked_without(tmp_path: Path) -> None:
    plan = [(f'1. {CODE}("1")\n2. join()\n', 0.0)]
    with PlannerEndpoint([plan], ["Action: Finish(x)"]) as planner, TimedTools() as tools:
        planner.reject_stream_options = True
        assert run(tmp_path, planner, tools.url) == 0
        assert tools.calls == 1
    asked = [b for b in planner.bodies if b.get("stream")]
    assert "stream_options" in asked[0] and "stream_options" not in asked[1]
    assert read_json(tmp_path / "summary.json")["prompt_tokens"] == 0


@pytest.mark.timeout(60)
def test_the_first_call_runs_before_the_plan_ends(tmp_path: Path) -> None:
    """Their task fetcher polls every 10 ms and, while streaming, a ready task waits until
    the next planned task arrives (``await task_queue.get()`` before it schedules); here a
    call starts the moment it is read."""
    plan = [(f'1. {CODE}("1")\n', 0.0), ("2. join()\n", 2.0)]
    with PlannerEndpoint([plan], ["Action: Finish(ok)"]) as planner, TimedToolsLog() as tools:
        assert run(tmp_path, planner, tools.url) == 0
        assert tools.first is not None and tools.first < planner.ended[0] - 1.0


class TimedToolsLog(ToolStandIn):
    def __init__(self) -> None:
        super().__init__(together=1, hold=0.0)
        self.first: float | None = None

    def process_request(self, request, client_address):  # noqa: ANN001 (socketserver's)
        if self.first is None:
            self.first = time.monotonic()
        super().process_request(request, client_address)


@pytest.mark.timeout(60)
def test_several_lines_in_one_piece_all_run(tmp_path: Path) -> None:
    plan = [(f'1. {CODE}("1")\n2. {CODE}("2")\n3. {CODE}("3")\n4. join()', 0.0)]
    with PlannerEndpoint([plan], ["Action: Finish(three)"]) as planner, TimedTools() as tools:
        assert run(tmp_path, planner, tools.url) == 0
        assert tools.calls == 3
    # the stream's usage is kept when its last piece ends without a newline
    assert read_json(tmp_path / "summary.json")["prompt_tokens"] == 1000


@pytest.mark.timeout(60)
def test_bad_plans_get_error_observations_and_never_hang(tmp_path: Path) -> None:
    """Their task fetcher: a numbering gap or a ``$N`` of no task raises ``KeyError``
    (``self.tasks_done[d]``); a tool that raises leaves ``tasks_done`` unset, so the
    scheduler waits forever. Here each is an observation, and the plan goes on."""
    plan = [
        (f'1. {CODE}("1")\n', 0.0),
        (f'1. {CODE}("again")\n', 0.0),  # a duplicate id
        (f"5. {CODE}($7)\n", 0.0),  # a gap, and a reference to no task
        ('6. no_such_tool("x")\n', 0.0),
        (f'7. {CODE}("a", "b")\n', 0.0),  # more arguments than parameters
        (f"8. {CODE}($6)\n", 0.0),  # depends on a call that failed
        ("9. join()\n", 0.0),
    ]
    with PlannerEndpoint([plan], ["Action: Finish(done)"]) as planner, TimedTools() as tools:
        assert run(tmp_path, planner, tools.url) == 0
        assert tools.calls == 1
    observations = [json.loads(o)["error"] for _, o in calls_of(answer_of(tmp_path))]
    assert observations[0] == ""
    assert observations[1] == "task 1: a duplicate id (ids go on from 2)"
    assert "refers to task 7, which is not an earlier task" in observations[2]
    assert "No such function name: no_such_tool" in observations[3]
    assert "takes 1 arguments by position, not 2" in observations[4]
    assert observations[5].startswith("not run: task 6 failed")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["500", "garbage"])
def test_a_failing_tool_is_an_observation(tmp_path: Path, mode: str) -> None:
    plan = [(f'1. {CODE}("1")\n2. {CODE}($1)\n3. join()\n', 0.0)]
    with PlannerEndpoint([plan], ["Action: Finish(x)"]) as planner, TimedTools(mode) as tools:
        assert run(tmp_path, planner, tools.url) == 0
    (_, first), (_, second) = calls_of(answer_of(tmp_path))
    assert json.loads(first)["error"] and "not run: task 1 failed" in json.loads(second)["error"]


@pytest.mark.timeout(60)
def test_a_planner_that_breaks_off_fails_the_query_without_waiting(tmp_path: Path) -> None:
    """Their planner runs in a task of its own: when it raises, the fetcher waits forever for
    the end-of-plan sentinel. Here the started calls finish, then the query fails, is
    reported, and the next run retries it."""
    plan = [(f'1. {CODE}("1")\n', 0.0), ("2. join()\n", 0.2)]
    with PlannerEndpoint([plan], []) as planner, TimedTools() as tools:
        planner.break_after = 1
        start = time.monotonic()
        assert run(tmp_path, planner, tools.url) == 3
        assert time.monotonic() - start < 30
    summary = read_json(tmp_path / "summary.json")
    assert summary["failed"] == 1 and "broke" in summary["failures"][BARCODE]


@pytest.mark.timeout(60)
def test_a_replan_keeps_the_numbering(tmp_path: Path) -> None:
    """Their replanning makes a new ``TaskFetchingUnit`` per round, so ``$1`` in the second
    plan names nothing; here it names the first round's call 1."""
    plans = [
        [(f'1. {CODE}("first")\n2. join()\n', 0.0)],
        [(f"Thought: use it\n3. {CODE}($1)\n4. join()\n", 0.0)],
    ]
    joins = ["Thought: not enough\nAction: Replan(more)", "Action: Finish(two rounds)"]
    with PlannerEndpoint(plans, joins) as planner, TimedTools() as tools:
        assert run(tmp_path, planner, tools.url, "--max_replans", "1") == 0
        assert tools.calls == 2
    (_, o1), (third, o3) = calls_of(answer_of(tmp_path))
    assert json.loads(third) == {"code": "$1"} and "first" in json.loads(o3)["response"]
    replan_prompt = planner.prompts[2]
    assert "Previous Plan:" in replan_prompt and f'1. {CODE}("first")' in replan_prompt
    final = json.loads(answer_of(tmp_path)["answer_generation"]["final_answer"])
    assert final["final_answer"] == "two rounds"


@pytest.mark.timeout(60)
def test_the_last_joiner_may_not_replan(tmp_path: Path) -> None:
    plan = [(f'1. {CODE}("1")\n2. join()\n', 0.0)]
    with PlannerEndpoint([plan], ["Action: Replan(more)"]) as planner, TimedTools() as tools:
        assert run(tmp_path, planner, tools.url, "--max_replans", "0") == 0
    summary = read_json(tmp_path / "summary.json")
    assert summary["gave_up"] + summary["no_answer"] == 1 and summary["llm_calls"] == 2
    # an answer that gave up converts for ToolEval: "LLMCompiler" names neither CoT nor DFS,
    # so the converter reads the file's shape (its trys)
    converted = convert_dir(tmp_path, "LLMCompiler")[BARCODE]["answer"]
    assert converted["final_answer"] == "" and converted["method"] == "LLMCompiler"


@pytest.mark.timeout(600)
def test_llmcompiler_on_a_local_model_in_rounds(toolserver, tmp_path: Path) -> None:  # noqa: F811
    """With a local model (a batched backend) the plan is written by the role's batch, not
    streamed, and its calls run before the round goes on: two queries, planner and joiner
    each, whatever the 135M model writes."""
    out = tmp_path / "answers"
    flags = [f"--backbone_model_name_or_path={SMOL}", "--max_new_tokens", "48"]
    cmd = agent(out, toolserver, "--agent", "llmcompiler", *flags, ids=f"{BARCODE},86143")
    run_command([*cmd, "--concurrency", "2"])
    summary = read_json(out / "summary.json")
    assert summary["failed"] == 0 and summary["run"] == 2
    assert summary["llm_calls_by_role"] == {"backbone": 4} and summary["model_calls"] == 2
    for qid in (BARCODE, "86143"):
        answer = read_json(out / f"{qid}_LLMCompiler.json")
        assert answer["answer_generation"]["query_count"] == 2
