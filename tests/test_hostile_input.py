"""Ids and names read from files never become paths unchecked, and a key goes only to the
endpoint it was given for: a hostile query file, a hostile cache category and clashing model
names get a clear error, and nothing is written outside the folder meant."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from openai_gateway import ScriptedJudge
from test_tooleval_win_rate import SCRIPT, setup
from test_tooleval_win_rate import run as win_rate

from inference_utils.agent.answers import answer_path
from inference_utils.agent.run import main as run_agent_main
from inference_utils.endpoints import Endpoint, EndpointClient, EndpointError
from inference_utils.toolclient import ToolClient
from inference_utils.toolserver.cache import AnswerCache, export_stb_cache
from inference_utils.toolserver.cli import main as toolserver_main
from inference_utils.toolserver.tools import ApiKey
from inference_utils.toolserver.upstream import Upstream
from process_data.protocol import REQUEST_FAILED, file_name_part

HOSTILE = ["../x", "/abs/x", "..", "a\\b", "", "nul\x00here"]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_name_that_would_leave_its_folder_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="query id .* cannot name a file: it "):
        file_name_part(name, "query id")
    with pytest.raises(ValueError, match="cannot name a file"):
        answer_path("out", name, "CoT@1")


def test_ordinary_names_pass() -> None:
    for name in ("86143", "G1_instruction", "q-1 (b)", "Données", "x.y"):
        assert file_name_part(name, "query id") == name
    assert answer_path("out", 86143, "DFS_woFilter_w2") == Path("out/86143_DFS_woFilter_w2.json")


@pytest.mark.parametrize("qid", ["../escaped", "/tmp/escaped"])
def test_a_hostile_query_file_stops_the_agent_before_it_writes(tmp_path: Path, qid: str) -> None:
    queries = tmp_path / "queries.json"
    queries.write_text(json.dumps([{"query_id": 1, "query": "q"}, {"query_id": qid}]))
    out = tmp_path / "run" / "answers"
    argv = ["--queries", str(queries), "--toolserver", "http://127.0.0.1:9/virtual"]
    with pytest.raises(SystemExit) as stop:
        run_agent_main([*argv, "--output_dir", str(out), "--backbone_model_name_or_path", "x"])
    message = str(stop.value)
    assert f"{queries}: query 1: query id {qid!r} cannot name a file" in message
    assert not out.exists(), "nothing is written"
    assert not (tmp_path / "run" / "escaped_CoT@1.json").exists()


def test_a_hostile_cache_category_stops_the_export_before_it_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A query file can name a category ``..`` (StableToolBench's name rule keeps it); the
    export names the entry, writes nothing, and the command exits 2."""
    db = tmp_path / "c.sqlite"
    with AnswerCache(db) as cache:
        answer = {"error": "", "response": "ok"}
        cache.put(ApiKey("Data", "good_tool", "get"), {"q": 1}, answer, "offline")
        cache.put(ApiKey("..", "evil", "get"), {"q": 1}, answer, "offline")
        out = tmp_path / "deep" / "out"
        with pytest.raises(ValueError, match=r"\.\./evil/get: category '\.\.' cannot name"):
            export_stb_cache(cache, out)
    assert not (tmp_path / "deep").exists(), "nothing is written, inside the folder or out"
    assert toolserver_main(["--cache", str(db), "--export_stb_cache", str(out)]) == 2
    assert "nothing exported" in capsys.readouterr().err
    assert not (tmp_path / "deep").exists()


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        (("same", "same"), "both named 'same'"),
        (("rounds", "out"), "'rounds' is a key of the records"),
        (("ref", "round_1"), "'round_1' is a key of the records"),
        (("ref", ".."), "model name '..' cannot name a file"),
    ],
)
def test_win_rate_refuses_names_that_would_mix_the_votes(
    tmp_path: Path, capsys: pytest.CaptureFixture, names: tuple[str, str], problem: str
) -> None:
    paths = setup(tmp_path)
    flags = ("--reference_model", names[0], "--output_model", names[1])
    with ScriptedJudge(SCRIPT) as judge:
        assert win_rate(paths, judge, tmp_path / "win", *flags) == 2
        assert judge.posts == 0
    assert problem in capsys.readouterr().err
    assert not (tmp_path / "win").exists()


def test_a_key_is_sent_only_where_it_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("ROLE_KEY", "sk-role")
    assert Endpoint("http://127.0.0.1:8000/v1").key() is None
    assert Endpoint("https://api.openai.com/v1").key() == "sk-openai"
    assert Endpoint("http://127.0.0.1:8000/v1", api_key_env="ROLE_KEY").key() == "sk-role"
    assert Endpoint("http://127.0.0.1:8000/v1", api_key="sk-given").key() == "sk-given"
    with pytest.raises(ValueError, match="environment variable UNSET_KEY is not set"):
        Endpoint("http://127.0.0.1:8000/v1", api_key_env="UNSET_KEY").key()
    assert "sk-given" not in repr(Endpoint("http://h/v1", api_key="sk-given"))


class _Flood(BaseHTTPRequestHandler):
    """Answers every POST with a body far beyond any cap: a declared 1 GB, or chunks without
    end (until the client hangs up)."""

    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        chunk = b"[" + b"0," * 32767 + b"0"
        try:
            if self.server.mode == "declared":
                self.send_header("content-length", str(10**9))
                self.end_headers()
                while True:
                    self.wfile.write(chunk)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(params=["declared", "chunked"])
def flood(request: pytest.FixtureRequest):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flood)
    server.daemon_threads, server.mode = True, request.param
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_answers_beyond_the_cap_are_refused_not_read(flood: str) -> None:
    """A role endpoint, the tool client and the tool server's upstream each stop reading at
    their cap (1 MiB here) and say so; none reads the endless body."""
    cap = 2**20
    start = time.monotonic()
    with EndpointClient(Endpoint(flood, "m"), max_answer_bytes=cap, max_retries=0) as client:
        with pytest.raises(EndpointError, match="1,048,576"):
            client.complete("hello")
        with pytest.raises(EndpointError, match="1,048,576"):
            list(client.stream_complete("hello"))
    with ToolClient(f"{flood}/virtual", max_answer_bytes=cap, max_retries=0) as tools:
        seen = tools.call("Data", "t", "a", "{}")
    assert seen.status == REQUEST_FAILED and "1,048,576" in seen.error
    upstream = Upstream(f"{flood}/rapidapi")

    async def ask() -> tuple[dict | None, str]:
        try:
            return await upstream.answer({"api_name": "a"}, "")
        finally:
            await upstream.aclose()

    assert asyncio.run(ask()) == (None, "BodyTooLarge")
    assert time.monotonic() - start < 60
