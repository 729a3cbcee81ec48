"""The one role-backend interface: local models (a tiny random LLaMA) and an OpenAI-compatible
endpoint (the llama.cpp server) answer the same requests the same way, batched and streamed;
and no driver names a backend class."""

from __future__ import annotations

import ast
import time
from dataclasses import replace

import pytest
from conftest import REPO, TINY_LLAMA

from inference_utils.backends import Decoding, ModelRequest, ModelResult, cut_stream
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


def test_a_stream_is_cut_at_a_stop_string_whatever_the_chunking() -> None:
    text = "1. search(x)\n2. join()\n<END_OF_PLAN>\n3. never(y)"
    for size in (1, 2, 3, 5, 13, len(text)):
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        out = list(cut_stream(pieces, ("<END_OF_PLAN>",)))
        assert "".join(out) == "1. search(x)\n2. join()\n", size
        assert all(out)  # no empty piece
    assert "".join(cut_stream(["ab", "c"], ("zz", "bc"))) == "a"
    assert "".join(cut_stream(["abc"], ())) == "abc"
    assert Decoding(stop=("X", "Y")).cut("aYbXc") == "a"
    for bad in (dict(max_new_tokens=0), dict(temperature=-1), dict(top_p=0), dict(stop=("",))):
        with pytest.raises(ValueError):
            Decoding(**bad)


def test_a_requests_decoding_overrides_the_local_settings(local: HFModels) -> None:
    """Each request decodes with its own settings (several settings in one batch), and its
    output ends before its stop string."""
    free = local.generate("planner", [ModelRequest(prompt=p) for p in PROMPTS])
    short = Decoding(max_new_tokens=2)
    stop_at = free[1].text[2:4]  # a string the free output holds
    stopped = Decoding(stop=(stop_at,))
    mixed = local.generate(
        "planner",
        [
            ModelRequest(prompt=PROMPTS[0], decoding=short),
            ModelRequest(prompt=PROMPTS[1], decoding=stopped),
            ModelRequest(prompt=PROMPTS[2]),
        ],
    )
    assert mixed[0].completion_tokens == 2 and free[0].text.startswith(mixed[0].text.strip())
    assert stop_at not in mixed[1].text and free[1].text.startswith(mixed[1].text)
    assert mixed[1].completion_tokens < free[1].completion_tokens  # it stopped early
    assert mixed[2] == free[2]
    streamed = "".join(local.stream("planner", ModelRequest(prompt=PROMPTS[1], decoding=stopped)))
    assert clean_output(streamed) == mixed[1].text


def test_an_endpoint_reports_token_counts_and_takes_a_requests_decoding(
    llama_server: str,
) -> None:
    client = EndpointClient(Endpoint(llama_server), max_new_tokens=12)
    chat = EndpointClient(Endpoint(llama_server, api="chat"), max_new_tokens=12)
    backend = EndpointBackend({"planner": client, "caller": chat})
    try:
        for role, request in (
            ("planner", ModelRequest(prompt=PROMPTS[0])),
            ("caller", ModelRequest(messages=({"role": "user", "content": "Count to ten."},))),
        ):
            free = backend.generate(role, [request])[0]
            assert free.prompt_tokens > 0 and 0 < free.completion_tokens <= 12
            short = replace(request, decoding=Decoding(max_new_tokens=3))
            assert backend.generate(role, [short])[0].completion_tokens <= 3
            stop_at = free.text.strip()[1:3]
            stopped = replace(request, decoding=Decoding(stop=(stop_at,)))
            text = backend.generate(role, [stopped])[0].text
            assert stop_at not in text and free.text.startswith(text)
            assert stop_at not in "".join(backend.stream(role, stopped))
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


def test_the_role_flags_choose_greedy_or_sampling() -> None:
    """Greedy by default (a run repeats); ``--temperature T`` samples at T (ToolBench's
    ToolLLaMA: ``"temperature": 0.5`` in ``tool_llama_model.py``), ``--do_sample`` alone at
    1.0; local models and endpoints alike."""
    import argparse

    from inference_utils.role_flags import (
        add_role_arguments,
        build_endpoints,
        generation_settings,
        sampling_temperature,
    )

    parser = argparse.ArgumentParser()
    add_role_arguments(parser)
    for flags, temperature in (
        ([], 0.0),
        (["--do_sample"], 1.0),
        (["--temperature", "0.5"], 0.5),
        (["--do_sample", "--temperature", "0"], 0.0),
    ):
        args = parser.parse_args(flags)
        assert sampling_temperature(args) == temperature
        settings = generation_settings(args)
        assert settings.do_sample == (temperature > 0)
        assert not settings.do_sample or settings.temperature == temperature
        args = parser.parse_args([*flags, "--backbone_endpoint", "http://127.0.0.1:9/v1"])
        backend = build_endpoints(args)
        assert backend.clients["backbone"].sampling["temperature"] == temperature
        backend.close()
    with pytest.raises(SystemExit, match="must not be negative"):
        sampling_temperature(parser.parse_args(["--temperature", "-1"]))
