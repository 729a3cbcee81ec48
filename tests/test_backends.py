"""The one role-backend interface: local models (a tiny random LLaMA) and an OpenAI-compatible
endpoint (the llama.cpp server) answer the same requests the same way, batched and streamed;
and no driver names a backend class."""

from __future__ import annotations

import ast
import time

import pytest
from conftest import REPO, TINY_LLAMA

from inference_utils.backends import ModelRequest, ModelResult
from inference_utils.endpoints import Endpoint, EndpointBackend, EndpointClient
from inference_utils.generation import GenerationSettings, HFModels
from process_data.protocol import clean_output

PROMPTS = ["user: weather in Lyon?", "user: the capital of France", "user: 2 + 2"]


@pytest.fixture(scope="module")
def local() -> HFModels:
    return HFModels({"planner": TINY_LLAMA}, GenerationSettings(max_new_tokens=6))


def test_a_local_batch_answers_each_request_with_its_token_counts(local: HFModels) -> None:
    results = local.generate("planner", [ModelRequest(prompt=p) for p in PROMPTS])
    alone = [local.generate("planner", [ModelRequest(prompt=p)])[0] for p in PROMPTS]
    assert [r.text for r in results] == [r.text for r in alone]
    tokenizer = local._model_for("planner")[1]
    for prompt, result in zip(PROMPTS, results, strict=True):
        assert result.prompt_tokens == len(tokenizer("system: " + prompt)["input_ids"])
        assert 0 < result.completion_tokens <= 6
    with pytest.raises(KeyError, match="no model for role 'caller'"):
        local.generate("caller", [ModelRequest(prompt="x")])


def test_a_local_stream_yields_what_generate_returns(local: HFModels) -> None:
    for prompt in PROMPTS:
        pieces = list(local.stream("planner", ModelRequest(prompt=prompt)))
        expected = local.generate("planner", [ModelRequest(prompt=prompt)])[0].text
        assert clean_output("".join(pieces)) == expected


def test_a_local_stream_that_fails_raises_instead_of_waiting() -> None:
    """A generation that raises in its thread ends the stream with that error (before, a
    streamer left without its end would keep its reader waiting for ever)."""
    broken = HFModels({"planner": TINY_LLAMA}, GenerationSettings(max_new_tokens=-1))
    start = time.monotonic()
    with pytest.raises(ValueError, match="max_new_tokens"):
        list(broken.stream("planner", ModelRequest(prompt=PROMPTS[0])))
    assert time.monotonic() - start < 60
    assert broken.generate("planner", []) == []  # the backend is free again


def test_a_request_needs_a_prompt_or_messages() -> None:
    with pytest.raises(ValueError, match="a prompt or messages"):
        ModelRequest()
    assert ModelResult("", ({"name": "f", "arguments": '{"a": 1}'},)).arguments() == {"a": 1}
    assert ModelResult('```json\n{"a": 2}\n```').arguments() == {"a": 2}
    with pytest.raises(ValueError):
        ModelResult("no json").arguments()


def test_an_endpoint_streams_what_it_generates(llama_server: str) -> None:
    """The completions and the chat API, through server-sent events and whole."""
    client = EndpointClient(Endpoint(llama_server), max_new_tokens=12)
    chat = EndpointClient(Endpoint(llama_server, api="chat"), max_new_tokens=12)
    backend = EndpointBackend({"planner": client, "caller": chat})
    try:
        request = ModelRequest(prompt=PROMPTS[0])
        whole = backend.generate("planner", [request])[0].text
        assert clean_output("".join(backend.stream("planner", request))) == whole
        asked = ModelRequest(messages=({"role": "user", "content": "Say hello."},))
        whole = backend.generate("caller", [asked])[0].text
        pieces = list(backend.stream("caller", asked))
        assert len(pieces) > 1 and clean_output("".join(pieces)) == whole
        with pytest.raises(ValueError, match="speaks chat: the request has no messages"):
            backend.generate("caller", [request])
        with pytest.raises(KeyError, match="no endpoint for role 'summarizer'"):
            backend.generate("summarizer", [request])
    finally:
        backend.close()


def test_no_driver_names_a_backend_class() -> None:
    """The static pipeline, the agent, the judges and the simulator ask a role backend; which
    kind it is they never check (no name of a backend class in their code)."""
    drivers = [
        "inference_utils/static/infer.py",
        "inference_utils/driver.py",
        "inference_utils/tooleval/judge.py",
        "inference_utils/toolserver/simulate.py",
    ]
    classes = {"HFModels", "LoRAModels", "EndpointClient", "EndpointBackend", "ChatModel"}
    for path in drivers:
        tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not names & classes, f"{path} names {sorted(names & classes)}"
