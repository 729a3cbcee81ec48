"""The single-model baselines beside α-UMi's roles: ReAct (``--agent react``, ToolBench's
ToolLLaMA prompt) and native function calling (``--agent function_calling``, ToolBench's
``chatgpt_function`` with OpenAI tools), each against a real OpenAI-compatible server on
127.0.0.1 that plays the model by rule, and a real echoing tool server."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from conftest import llama_server, read_json  # noqa: F401
from fastapi import Request
from fastapi.responses import JSONResponse
from openai_gateway import PERMITTED, Gateway
from test_agent_run import BARCODE, ToolStandIn
from test_llmcompiler import CODE, QUERIES

from inference_utils.agent.run import main as run_agent_main
from process_data.protocol import FINISH, react_prompt, react_system, tool_messages


def test_react_prompt_is_toolllamas() -> None:
    """ToolBench's ``process_system_message`` puts the output format after "with a function
    call to actually excute your step." and appends ``str(functions)``; its ``parse`` writes
    ``Role: content`` lines and ends with ``Assistant:\\n``; ``process_assistant_reply``
    writes a call as ``Thought: ...\\nAction: ...\\nAction Input: ...``."""
    functions = [{"name": "f", "parameters": {}}]
    system = react_system("..., with a function call to actually excute your step.\nGo", functions)
    assert system == (
        "..., with a function call to actually excute your step. Your output should follow "
        "this format:\nThought:\nAction\nAction Input:\n\nGo"
        "\nSpecifically, you have access to the following APIs: [{'name': 'f', 'parameters': {}}]"
    )
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "t", "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "function", "name": "f", "content": "R"},
    ]
    assert react_prompt(messages, functions).endswith(
        "User: U\nAssistant: Thought: t\nAction: f\nAction Input: {}\nFunction: R\nAssistant:\n"
    )
    chat = tool_messages(messages)
    assert chat[2]["tool_calls"][0]["id"] == "call_1" and chat[3] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "R",
    }


class ModelByRule(Gateway):
    """Completions and chat: ``rule(body)`` gives the answer's message (chat) or text.
    With ``reject_tool_roles`` a request holding a ``tool`` message gets the 400 that
    servers without tool roles send."""

    def __init__(self, rule):
        super().__init__("model", "http://127.0.0.1:9")
        self.rule = rule
        self.bodies: list[dict] = []
        self.lock = threading.Lock()

    async def _handle(self, path: str, request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse({"object": "list", "data": [{"id": "model"}]})
        body = await request.json()
        with self.lock:
            self.bodies.append(body)
        if self.faults.reject_tool_roles:
            bad = next((m["role"] for m in body.get("messages", []) if m["role"] == "tool"), None)
            if bad:
                return JSONResponse({"given": bad, "permitted": PERMITTED}, status_code=400)
        answer = self.rule(body)
        if "prompt" in body:
            return JSONResponse({"choices": [{"index": 0, "text": answer}]})
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        return JSONResponse({"choices": [{"index": 0, "message": answer}], "usage": usage})


def tool_call(n: int, name: str, arguments: dict) -> dict:
    return {
        "id": f"x{n}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def calling_rule(body: dict) -> dict:
    """Two lookups at once; once results are in (as tool messages, or as text after a
    refusal), ``Finish`` quoting how many results it saw."""
    seen = [
        m for m in body["messages"] if m["role"] == "tool" or "observation" in str(m["content"])
    ]
    if not seen:
        calls = [tool_call(1, CODE, {"code": "1"}), tool_call(2, CODE, {"code": "2"})]
        return {"role": "assistant", "content": "Both at once.", "tool_calls": calls}
    answer = {"return_type": "give_answer", "final_answer": f"{len(seen)} results"}
    return {"role": "assistant", "content": None, "tool_calls": [tool_call(3, FINISH, answer)]}


def run(out: Path, model: ModelByRule, tools: str, *flags: str) -> int:
    argv = ["--queries", str(QUERIES), "--toolserver", tools, "--output_dir", str(out)]
    argv += ["--query_ids", BARCODE, "--backbone_endpoint", model.url, "--max_retries", "0"]
    argv += ["--request_timeout", "20", "--tool_retries", "0"]
    return run_agent_main([*argv, *flags])


def chain_of(out: Path) -> list[dict]:
    return read_json(out / f"{BARCODE}_CoT@1.json")["trys"][0]["chain"]


@pytest.mark.timeout(60)
def test_function_calling_runs_every_call_of_a_turn_at_once(tmp_path: Path) -> None:
    flags = ["--agent", "function_calling", "--endpoint_api", "chat"]
    with ModelByRule(calling_rule) as model, ToolStandIn(together=2, hold=10.0) as tools:
        start = time.monotonic()
        assert run(tmp_path, model, tools.url, *flags) == 0
        assert tools.most == 2 and time.monotonic() - start < 9  # together, not one by one
    first, second = model.bodies
    assert {t["function"]["name"] for t in first["tools"]} == {CODE, FINISH}
    answered = [m for m in second["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in answered] == ["call_1", "call_2"]
    inputs = [n["description"] for n in chain_of(tmp_path) if n["node_type"] == "Action Input"]
    assert [json.loads(i) for i in inputs[:2]] == [{"code": "1"}, {"code": "2"}]
    final = json.loads(inputs[2])["final_answer"]
    assert final == "2 results"
    summary = read_json(tmp_path / "summary.json")
    assert summary["answered"] == 1 and summary["tool_calls"] == 2 and summary["llm_calls"] == 2
    assert summary["prompt_tokens"] == 20 and summary["completion_tokens"] == 10


@pytest.mark.timeout(60)
def test_function_calling_with_a_server_that_refuses_tool_roles(tmp_path: Path) -> None:
    """The endpoint client resends such a conversation with the tool turns as text; the
    agent goes on."""
    flags = ["--agent", "function_calling", "--endpoint_api", "chat"]
    with ModelByRule(calling_rule) as model, ToolStandIn(together=1, hold=0.0) as tools:
        model.faults.reject_tool_roles = True
        assert run(tmp_path, model, tools.url, *flags) == 0
    assert read_json(tmp_path / "summary.json")["answered"] == 1
    assert not any(m["role"] == "tool" for m in model.bodies[-1]["messages"])


def test_function_calling_needs_a_chat_endpoint(tmp_path: Path, capsys) -> None:
    argv = ["--agent", "function_calling", "--queries", str(QUERIES), "--toolserver", "x"]
    assert run_agent_main([*argv, "--output_dir", str(tmp_path), "--backbone_endpoint", "u"]) == 2
    assert "--endpoint_api chat" in capsys.readouterr().err


def react_rule(body: dict) -> str:
    """Call the API, then answer with ``Finish``; never an observation of its own (the stop
    string would cut it)."""
    prompt = body["prompt"]
    if "Function: " not in prompt:
        return (
            f'Thought: look it up\nAction: {CODE}\nAction Input: {{"code": "9"}}\nFunction: made up'
        )
    answer = json.dumps({"return_type": "give_answer", "final_answer": "found it"})
    return f"Thought: done\nAction: {FINISH}\nAction Input: {answer}"


@pytest.mark.timeout(60)
def test_react_one_call_per_step(tmp_path: Path) -> None:
    with ModelByRule(react_rule) as model, ToolStandIn(together=1, hold=0.0) as tools:
        assert run(tmp_path, model, tools.url, "--agent", "react") == 0
        assert tools.calls == 1
    first, second = (b["prompt"] for b in model.bodies)
    assert "Specifically, you have access to the following APIs: " in first
    assert first.endswith("Assistant:\n") and "Function: made up" not in second
    assert f'Action: {CODE}\nAction Input: {{"code": "9"}}\nFunction: {{"error": ""' in second
    chain = chain_of(tmp_path)
    assert [n["node_type"] for n in chain][:3] == ["Thought", "Action", "Action Input"]
    summary = read_json(tmp_path / "summary.json")
    assert summary["answered"] == 1 and summary["llm_calls_by_role"] == {"backbone": 2}


@pytest.mark.timeout(600)
def test_function_calling_and_react_against_llama_cpp(llama_server, tmp_path: Path) -> None:  # noqa: F811
    """The default GGUF behind llama.cpp's server: it takes ``tools`` (and answers in text,
    without a chat format for tool calls), and refuses an assistant message whose content is
    null, which the tool messages therefore never hold; LLMCompiler's plan streams from it.
    Each agent runs a query to its bounds without a failure."""
    bounds = ["--max_new_tokens", "32", "--single_chain_max_step", "4", "--request_timeout", "300"]
    with ToolStandIn(together=1, hold=0.0) as tools:
        agents = (("function_calling", "chat"), ("react", "completions"))
        for agent, api in (*agents, ("llmcompiler", "completions")):
            out = tmp_path / agent
            argv = ["--agent", agent, "--queries", str(QUERIES), "--toolserver", tools.url]
            argv += ["--output_dir", str(out), "--query_ids", BARCODE, "--endpoint_api", api]
            argv += ["--backbone_endpoint", llama_server, "--max_retries", "1", *bounds]
            assert run_agent_main(argv) == 0, agent
            summary = read_json(out / "summary.json")
            assert summary["failed"] == 0 and summary["llm_calls"] >= 1, agent
            assert summary["prompt_tokens"] > 0, agent  # llama.cpp reports usage
