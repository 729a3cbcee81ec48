"""Static inference on OpenAI-compatible endpoints: a real llama.cpp server on 127.0.0.1 with
the default SmolLM2 GGUF, behind gateways that inject the faults real servers have."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ALPHA_UMI, REPO, read_json, read_jsonl
from openai_gateway import Busy, Gateway

from inference_utils.endpoints import (
    Endpoint,
    EndpointClient,
    EndpointError,
    plain_roles,
    rejects_tool_roles,
)
from inference_utils.static.steps import step_samples
from process_data.protocol import MODEL_INPUT_PREFIX, OBSERVATION, format_action

ROLES = ("planner", "caller", "summarizer")
#: three short dev trajectories (8 steps: calls, conclusions, a give-up; observations in
#: the history), so that a run on the 2-core CI machine takes seconds, not minutes
PICK = (17, 12, 13)


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared) -> Path:
    records = read_json(ALPHA_UMI / "static_eval" / "out_of_domain_dev.json")
    path = tmp_path_factory.mktemp("data") / "dev_short.json"
    path.write_text(json.dumps([records[i] for i in PICK]))
    return path


@pytest.fixture(scope="module")
def server(llama_server: str) -> str:
    return llama_server


@pytest.fixture
def gateways(server: str):
    busy = Busy()
    with (
        Gateway("planner", server, busy) as p,
        Gateway("caller", server, busy) as c,
        Gateway("summarizer", server, busy) as s,
    ):
        yield {"planner": p, "caller": c, "summarizer": s}


def pipeline(data: Path, out: Path, gates: dict[str, Gateway], *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "inference_utils.static.infer"]
    cmd += ["--data_path", str(data), "--output_dir", str(out), "--max_new_tokens", "8"]
    for role, gate in gates.items():
        cmd += [f"--{role}_endpoint", gate.url]
    return cmd + ["--endpoint_concurrency", "4", *extra]


def run(cmd: list[str], expect: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def reference(data: Path, server: str, tmp_path_factory) -> list[dict]:
    """An uninterrupted completions-API run, straight to the server."""
    out = tmp_path_factory.mktemp("reference")
    cmd = pipeline(data, out, {})
    run(cmd + [f"--{r}_endpoint={server}" for r in ROLES])
    return read_json(out / "predictions.json")


def test_endpoints_chain_concurrently_in_input_order(
    data: Path, gateways: dict[str, Gateway], reference: list[dict], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run(pipeline(data, out, gateways))
    predictions = read_json(out / "predictions.json")
    samples = list(step_samples(read_json(data)))
    assert [p["model_input"] for p in predictions] == [s["model_input"] for s in samples]
    assert predictions == reference  # greedy on the server: the same as another run
    # the planner endpoint saw exactly the training prompt of every step
    prompts = [e["body"]["prompt"] for e in gateways["planner"].log]
    assert sorted(prompts) == sorted(MODEL_INPUT_PREFIX + s["model_input"] for s in samples)
    follow = len(gateways["caller"].log) + len(gateways["summarizer"].log)
    assert follow == sum("planner_prediction" in p for p in predictions)
    # a follow-up started while other samples' planner requests were still in flight
    busy = gateways["planner"].busy.seen
    assert any("planner" in b and len(b) > 1 for b in busy), busy
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "inference_utils.static.evaluate",
            "--input_path",
            str(out / "predictions.json"),
            "--output_path",
            str(out / "metrics.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    assert read_json(out / "metrics.json")["plan_em"] >= 0


def test_chat_api_converts_tool_turns_for_servers_that_refuse_them(
    data: Path, gateways: dict[str, Gateway], tmp_path: Path
) -> None:
    for gate in gateways.values():
        gate.faults.reject_tool_roles = True
    out = tmp_path / "chat"
    run(pipeline(data, out, gateways, "--endpoint_api", "chat"))
    assert len(read_json(out / "predictions.json")) == 8
    log = [e for g in gateways.values() for e in g.log]
    refused = [e for e in log if e["status"] == 400]
    assert refused and all(any(m["role"] == "tool" for m in e["body"]["messages"]) for e in refused)
    # once refused, a client sends plain roles: observations as user text, calls as text
    sent = [e["body"]["messages"] for e in log if e["status"] == 200]
    assert all(m["role"] in ("system", "user", "assistant") for ms in sent for m in ms)
    assert any(m["content"].startswith(f"{OBSERVATION}: ") for ms in sent for m in ms)
    # a client learns it once: only requests already in flight then (4 per role) are refused
    assert all(g.statuses().count(400) <= 4 for g in gateways.values())


def test_busy_and_slow_servers_are_retried(
    data: Path, gateways: dict[str, Gateway], tmp_path: Path
) -> None:
    planner = gateways["planner"]
    planner.faults.fail_first = 2
    planner.faults.delay_first = 3
    # a healthy answer comes from the llama.cpp server, which a loaded machine can slow to
    # several seconds: the timeout leaves it room, and the held answer is well beyond it
    planner.faults.delay = 15.0
    out = tmp_path / "retry"
    cmd = pipeline(data, out, gateways, "--request_timeout", "10", "--num_infer_samples", "2")
    run(cmd)
    assert planner.statuses().count(503) == 2
    assert len(read_json(out / "predictions.json")) == 2
    # the held request was given up by the client's 10 s timeout (then retried), not waited
    # for: when its 15 s hold ends, its client has hung up
    deadline = time.monotonic() + 30
    while planner.abandoned == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert planner.abandoned == 1, "the client waited past its --request_timeout"


def test_a_key_goes_only_to_the_endpoint_it_was_given_for(
    data: Path, gateways: dict[str, Gateway], tmp_path: Path
) -> None:
    """``$OPENAI_API_KEY`` reaches no local role server; the planner's key, named by
    ``--planner_endpoint_api_key_env``, reaches the planner's endpoint and no other, and no
    key is on the command line. A variable that is not set is a clear error."""
    env = {**os.environ, "OPENAI_API_KEY": "sk-openai-SECRET", "PLANNER_KEY": "sk-plan-SECRET"}
    flags = ("--num_infer_samples", "2", "--planner_endpoint_api_key_env", "PLANNER_KEY")
    cmd = pipeline(data, tmp_path / "keys", gateways, *flags)
    run(cmd, env=env)
    assert set(gateways["planner"].keys) == {"Bearer sk-plan-SECRET"}
    assert gateways["caller"].keys or gateways["summarizer"].keys, "the other roles were asked"
    assert set(gateways["caller"].keys + gateways["summarizer"].keys) == {""}
    assert not any("SECRET" in arg for arg in cmd)
    del env["PLANNER_KEY"]
    failed = run(pipeline(data, tmp_path / "unset", gateways, *flags), expect=1, env=env)
    assert "its key's environment variable PLANNER_KEY is not set" in failed.stderr


def test_failed_steps_are_reported_kept_out_and_retried_on_rerun(
    data: Path, gateways: dict[str, Gateway], reference: list[dict], tmp_path: Path
) -> None:
    caller = gateways["caller"]
    caller.faults.fail_always = True
    caller.faults.fail_status = 500
    out = tmp_path / "partial"
    cmd = pipeline(data, out, gateways, "--max_retries", "1")
    first = run(cmd, expect=3)
    assert "failed" in first.stderr and "run the same command again" in first.stderr
    assert "HTTP 500" in first.stderr
    assert not (out / "predictions.json").exists()
    kept = read_jsonl(out / "predictions.jsonl")
    routed_to_caller = [p for p in reference if p.get("planner_prediction", "").endswith("caller.")]
    assert len(kept) == len(reference) - len(routed_to_caller)
    planned = len(gateways["planner"].log)

    caller.faults.fail_always = False
    run(cmd)
    assert len(gateways["planner"].log) - planned == len(routed_to_caller)  # nothing redone
    assert read_json(out / "predictions.json") == reference
    assert len(read_jsonl(out / "predictions.jsonl")) == len(reference)


def test_client_errors_name_the_endpoint(server: str) -> None:
    with EndpointClient(Endpoint(server), max_new_tokens=4) as client:
        assert isinstance(client.complete("user: hi").text, str)
        with pytest.raises(EndpointError, match=r"/nothing_here: HTTP 404"):
            client._request("POST", "/nothing_here", {})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with EndpointClient(Endpoint(dead, model="m"), max_retries=1, backoff=0.01) as client:
        with pytest.raises(EndpointError, match="failed after 2 attempts: ConnectError"):
            client.complete("hi")
    with pytest.raises(ValueError, match="http"):
        Endpoint("127.0.0.1:8000")
    with pytest.raises(ValueError, match="api"):
        Endpoint("http://x/v1", api="responses")


def test_role_rejections_are_recognised() -> None:
    body = json.dumps({"given": "function", "permitted": ["system", "assistant", "user"]})
    assert rejects_tool_roles(400, body)
    assert rejects_tool_roles(422, json.dumps({"detail": [{"ctx": json.loads(body)}]}))
    assert rejects_tool_roles(400, json.dumps({"error": {"message": body}}))
    assert rejects_tool_roles(400, "Conversation roles must alternate; role 'tool' is invalid")
    assert not rejects_tool_roles(500, body)
    assert not rejects_tool_roles(400, json.dumps({"error": "prompt too long"}))
    messages = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "f", "arguments": '{"a": 1}'}}],
        },
        {"role": "tool", "tool_call_id": "c", "content": '{"r": 2}'},
    ]
    assert plain_roles(messages) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": format_action("f", '{"a": 1}')},
        {"role": "user", "content": f'{OBSERVATION}: {{"r": 2}}'},
    ]


def test_only_some_role_endpoints_is_a_clear_error(data: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "inference_utils.static.infer"]
    cmd += ["--data_path", str(data), "--output_dir", str(tmp_path / "x")]
    cmd += ["--planner_endpoint", "http://127.0.0.1:9/v1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=os.environ)
    assert proc.returncode != 0 and "--caller_endpoint" in proc.stderr
