"""Four agent designs side by side on the same queries and tools: α-UMi's three roles,
ReAct, native function calling and LLMCompiler.

Queries: the StableToolBench G1 test queries (``solvable_queries/test_instruction``) whose
``relevant APIs`` name two or more APIs of their ``api_list``, in file order. The gold calls
of a query are its relevant APIs, each with its required parameters at their example values;
they do not depend on one another, so an agent may run them at once.

Tools: our tool server (offline simulator, a fresh cache) behind a proxy that holds every
call ``--delay`` seconds, as a remote API would, so every agent meets the same tool latency.

The model (``--backend scripted``, the default): one OpenAI-compatible server of this
benchmark that plays every agent's model by rule, the same rule for all: it makes the query's
gold calls, then answers with what they returned. Each reply takes ``--llm_delay`` seconds
(a plan streams its lines over that time); token counts are SmolLM2's tokenizer's. The model is
fast relative to the tools, so the figures show what each design's shape costs (token counts
are SmolLM2's tokenizer's on the text each request carries: prompt, messages and tool
schemas):

* α-UMi (``--method CoT@1``): planner, then caller, per call, one call per step; then planner
  and summarizer;
* ReAct: one model call per tool call, one call per step; then ``Finish``;
* function calling: every call in one turn, run at once; then ``Finish``;
* LLMCompiler: one plan with every call, run while it streams; then the joiner.

``--backend gguf``: the default GGUF (SmolLM2-135M-Instruct) on a llama.cpp server plays every
model instead; the untrained 135M model writes few valid calls, so this run shows what the
model's speed on this CPU does to each design, not their accuracy.

Pass rate: our ToolEval (``tooleval.convert``, ``tooleval.pass_rate``, toolbench mode, one
round) with the judge ``--judge`` names: ``gguf`` (the default GGUF on llama.cpp: 135M, so its
verdicts mean little), ``none`` (skip), or an OpenAI-compatible URL with ``--judge_model``.

    python benchmarks/bench_agents.py [--num_queries 20] [--delay 1.0] [--llm_delay 0.2]
        [--backend scripted|gguf] [--judge gguf|none|URL] [--write_results]
    python benchmarks/bench_agents.py --num_queries 3 --judge none   # smoke test, a minute
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_agent import DelayedTools, gguf_judge, serve, start_toolserver
from bench_prepro import free_port, machine, write_results
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
QUERIES = (
    ROOT.parent / "shared" / "data" / "stabletoolbench" / "solvable_queries" / "test_instruction"
) / "G1_instruction.json"
SECTIONS = {
    "scripted": "## Agents side by side, a fast model (inference_utils.agent.run --agent)",
    "gguf": "## Agents side by side, SmolLM2 on this CPU (inference_utils.agent.run --agent)",
}
AGENTS = ("alpha_umi", "react", "function_calling", "llmcompiler")
TARGET = 2.0  # LLMCompiler at least this many times faster than ReAct (scripted model)

from inference_utils.agent.environment import QueryEnv  # noqa: E402
from process_data.protocol import (  # noqa: E402
    END_OF_PLAN,
    FINISH,
    MODEL_INPUT_PREFIX,
    OBSERVATION,
    format_action,
    function_name,
    standardize,
)

# --------------------------------------------------------------------------------------------
# Queries and their gold calls
# --------------------------------------------------------------------------------------------


def gold_queries(n: int) -> list[tuple[dict, list[tuple[str, dict]]]]:
    """The first ``n`` queries with two or more relevant APIs, each with its gold calls
    (function name, arguments)."""
    picked = []
    for query in json.loads(QUERIES.read_text()):
        env = QueryEnv.from_query(query)
        functions = {f["name"]: f for f in env.functions}
        calls = []
        for tool, api in query.get("relevant APIs") or []:
            name = function_name(api, standardize(tool))
            function = functions.get(name)
            if function is None or any(c[0] == name for c in calls):
                continue
            properties = function["parameters"].get("properties", {})
            required = function["parameters"].get("required", [])
            calls.append(
                (name, {p: str(properties[p].get("example_value", "1")) for p in required})
            )
        if len(calls) >= 2:
            picked.append((query, calls))
        if len(picked) == n:
            break
    return picked


# --------------------------------------------------------------------------------------------
# The scripted model: every agent's model, by one rule
# --------------------------------------------------------------------------------------------


class ScriptedModel:
    """Completions (streamed or not) and chat for ``/<role>/v1``: finds the query by its
    text in the request, makes its gold calls in the agent's format, then answers."""

    def __init__(self, gold: list[tuple[dict, list[tuple[str, dict]]]], delay: float):
        from transformers import AutoTokenizer

        from GLPFT.models import resolve_model

        self.gold = [(q["query"], calls) for q, calls in gold]
        self.delay = delay
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
        app = FastAPI()
        app.add_api_route("/{role}/v1/models", self.models, methods=["GET"])
        app.add_api_route("/{role}/v1/completions", self.complete, methods=["POST"])
        app.add_api_route("/{role}/v1/chat/completions", self.chat, methods=["POST"])
        self.server, port = serve(app, "the scripted model")
        self.base = f"http://127.0.0.1:{port}"

    def url(self, role: str) -> str:
        return f"{self.base}/{role}/v1"

    def stop(self) -> None:
        self.server.should_exit = True

    async def models(self, role: str) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": role}]})

    def calls_of(self, text: str) -> list[tuple[str, dict]]:
        for query, calls in self.gold:
            if query in text:
                return calls
        raise ValueError("a request for no known query")

    def usage(self, prompt: str, answer: str) -> dict:
        p, c = (len(self.tokenizer(t)["input_ids"]) for t in (prompt, answer))
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    async def complete(self, role: str, request: Request):
        body = await request.json()
        prompt = body["prompt"].removeprefix(MODEL_INPUT_PREFIX)
        calls = self.calls_of(prompt)
        if "utmost parallelizability" in prompt:  # an LLMCompiler plan
            lines = [
                f"{i}. {name}({', '.join(f'{k}={v!r}' for k, v in args.items())})\n"
                for i, (name, args) in enumerate(calls, 1)
            ] + [f"{len(calls) + 1}. join(){END_OF_PLAN}\n"]
            if body.get("stream"):
                usage = self.usage(prompt, "".join(lines))
                if not (body.get("stream_options") or {}).get("include_usage"):
                    usage = None
                events = self.stream(lines, usage)
                return StreamingResponse(events, media_type="text/event-stream")
            text = "".join(lines)
        elif "Solve a question answering task" in prompt:  # LLMCompiler's joiner
            seen = prompt.split("Observation: ")[1:]
            text = "Thought: I have every result.\nAction: Finish(" + answer(seen) + ")"
        elif "Specifically, you have access to the following APIs" in prompt:  # ReAct
            seen = prompt.split("\nFunction: ")[1:]
            text = "Thought: " + react_or_finish(calls, seen)
        else:  # α-UMi's roles
            text = alpha_umi(role, prompt, calls)
        await asyncio.sleep(self.delay)
        usage = self.usage(prompt, text)
        return JSONResponse({"choices": [{"index": 0, "text": text}], "usage": usage})

    async def stream(self, lines: list[str], usage: dict | None):
        """The plan a line at a time over the reply's time, then its usage if asked."""
        for line in lines:
            await asyncio.sleep(self.delay / len(lines))
            yield f"data: {json.dumps({'choices': [{'index': 0, 'text': line}]})}\n\n"
        if usage is not None:
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    async def chat(self, role: str, request: Request) -> JSONResponse:
        body = await request.json()
        text = "\n".join(str(m.get("content") or "") for m in body["messages"])
        calls = self.calls_of(text)
        results = [m for m in body["messages"] if m["role"] == "tool"]
        if not results:
            message = {"role": "assistant", "content": "I call every API at once.", "tool_calls": [
                tool_call(i, name, args) for i, (name, args) in enumerate(calls)
            ]}  # fmt: skip
        else:
            final = {"return_type": "give_answer", "final_answer": answer(
                [str(m["content"]) for m in results]
            )}  # fmt: skip
            message = {"role": "assistant", "content": "", "tool_calls": [
                tool_call(len(calls), FINISH, final)
            ]}  # fmt: skip
        await asyncio.sleep(self.delay)
        # the prompt a server renders holds the tool schemas too
        usage = self.usage(text + json.dumps(body.get("tools") or []), json.dumps(message))
        return JSONResponse({"choices": [{"index": 0, "message": message}], "usage": usage})


def tool_call(i: int, name: str, arguments: dict) -> dict:
    function = {"name": name, "arguments": json.dumps(arguments)}
    return {"id": f"c{i}", "type": "function", "function": function}


def answer(observations: list[str]) -> str:
    """The final answer: what each call returned, cut short."""
    return "The tools answered: " + "; ".join(o.strip()[:60] for o in observations)


def react_or_finish(calls: list[tuple[str, dict]], seen: list[str]) -> str:
    if len(seen) < len(calls):
        name, arguments = calls[len(seen)]
        return f"call {name}.\n" + format_action(name, json.dumps(arguments))
    final = {"return_type": "give_answer", "final_answer": answer(seen)}
    return "I can answer.\n" + format_action(FINISH, json.dumps(final))


def alpha_umi(role: str, prompt: str, calls: list[tuple[str, dict]]) -> str:
    seen = prompt.split(f"{OBSERVATION}: ")[1:]
    if role == "planner":
        if len(seen) < len(calls):
            return f"Next I call {calls[len(seen)][0]}.\n Next: caller."
        return "The observations answer the query.\n Next: conclusion."
    if role == "caller":
        name, arguments = calls[min(len(seen), len(calls) - 1)]
        return format_action(name, json.dumps(arguments))
    return answer([s.split("\nassistant: ")[0] for s in seen])


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


def agent_flags(agent: str, model_url) -> list[str]:
    if agent == "alpha_umi":
        roles = ("planner", "caller", "summarizer")
        return [*(f"--{r}_endpoint={model_url(r)}" for r in roles), "--method", "CoT@1"]
    flags = ["--agent", agent, "--backbone_endpoint", model_url("backbone")]
    return [*flags, "--endpoint_api", "chat"] if agent == "function_calling" else flags


def run_agent(agent: str, args, ids: str, tools: str, model_url, work: Path) -> dict:
    from inference_utils.agent.run import main as run_agent_main

    out = work / "answers" / agent
    argv = ["--queries", str(QUERIES), "--toolserver", tools, "--output_dir", str(out)]
    argv += ["--query_ids", ids, "--concurrency", "1", "--tool_timeout", "120"]
    argv += ["--max_new_tokens", str(args.max_new_tokens), "--request_timeout", "600"]
    argv += ["--single_chain_max_step", str(args.max_steps)]
    code = run_agent_main([*argv, *agent_flags(agent, model_url)])
    summary = json.loads((out / "summary.json").read_text())
    if code != 0:
        raise SystemExit(f"bench_agents: {agent} exited with {code}: {summary['failures']}")
    summary["out"] = out
    return summary


def pass_rates(runs: dict[str, dict], ids: list[str], args, work: Path) -> dict[str, float]:
    """Each agent's pass rate through our ToolEval (toolbench mode, one round)."""
    from inference_utils.tooleval.convert import convert_dir
    from inference_utils.tooleval.pass_rate import main as pass_rate

    test_ids = work / "ids"
    test_ids.mkdir(exist_ok=True)
    (test_ids / "G1_instruction.json").write_text(json.dumps(dict.fromkeys(ids, 0)))
    rates = {}
    with contextlib.ExitStack() as stack:
        judge = args.judge
        if judge == "gguf":
            judge, args.judge_model = stack.enter_context(gguf_judge(work))
        for agent, summary in runs.items():
            method = "LLMCompiler" if agent == "llmcompiler" else "CoT@1"
            folder = work / "converted" / agent
            folder.mkdir(parents=True)
            converted = convert_dir(summary["out"], method)
            (folder / "G1_instruction.json").write_text(json.dumps(converted))
            save = work / "pass" / agent
            code = pass_rate(
                [
                    "--converted_answer_path", str(folder), "--test_ids", str(test_ids),
                    "--save_path", str(save), "--evaluate_times", "1",
                    "--evaluator", f"openai:{args.judge_model}", "--api_base", judge,
                    "--max_eval_threads", "1", "--request_timeout", "600", "--model", agent,
                    "--verdict_cache", str(work / "verdicts.sqlite"),
                ]
            )  # fmt: skip
            if code != 0:
                raise SystemExit(f"bench_agents: the pass rate of {agent} exited with {code}")
            stem = save / f"G1_instruction_{agent}.summary.json"
            rates[agent] = json.loads(stem.read_text())["pass_rate"]
    return rates


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def chart(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    names = [r["agent"] for r in rows]
    means = [r["mean"] for r in rows]
    ax.barh(names, means, color="#4c72b0", label="mean")
    ax.scatter([r["p90"] for r in rows], names, color="#c44e52", zorder=3, label="p90")
    ax.invert_yaxis()
    ax.set_xlabel("seconds per query")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_queries", type=int, default=20)
    p.add_argument("--delay", type=float, default=1.0, help="seconds per tool call")
    p.add_argument("--llm_delay", type=float, default=0.2, help="seconds per scripted reply")
    p.add_argument("--backend", choices=("scripted", "gguf"), default="scripted")
    p.add_argument("--agents", default=",".join(AGENTS))
    p.add_argument("--judge", default="gguf", help="gguf, none, or an OpenAI-compatible URL")
    p.add_argument("--judge_model", default="judge")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--max_steps", type=int, default=12, help="--single_chain_max_step")
    p.add_argument("--write_results", action="store_true")
    p.add_argument("--keep", type=Path, help="keep the answers and verdicts in this folder")
    args = p.parse_args()
    agents = [a for a in args.agents.split(",") if a]
    gold = gold_queries(args.num_queries)
    ids = [str(q["query_id"]) for q, _ in gold]
    gold_calls = sum(len(c) for _, c in gold)
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        toolserver = start_toolserver(work)
        proxy = DelayedTools(toolserver.url, args.delay)  # type: ignore[attr-defined]
        model, llama = None, None
        try:
            if args.backend == "scripted":
                model = ScriptedModel(gold, args.llm_delay)
                model_url = model.url
            else:
                from GLPFT.models import gguf_path
                from inference_utils.server_process import ServerProcess

                port = free_port()
                cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path())]
                cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "8192"]
                cmd += ["--n_threads", "2"]
                base = f"http://127.0.0.1:{port}/v1"
                llama = ServerProcess("llama.cpp", cmd, f"{base}/models", work / "llama.log")
                llama.__enter__()

                def model_url(role: str) -> str:
                    return base

            for agent in agents:
                start = time.monotonic()
                runs[agent] = run_agent(agent, args, ",".join(ids), proxy.url, model_url, work)
                print(f"  {agent}: {time.monotonic() - start:.1f} s", file=sys.stderr)
        finally:
            if model is not None:
                model.stop()
            if llama is not None:
                llama.__exit__(None, None, None)
            proxy.shutdown()
            toolserver.terminate()
            toolserver.wait()
        rates = pass_rates(runs, ids, args, work) if args.judge != "none" else {}

    n = len(ids)
    rows = []
    for agent, s in runs.items():
        seconds = list(s["query_seconds"].values())
        rows.append(
            {
                "agent": agent,
                "mean": statistics.mean(seconds),
                "p90": p90(seconds),
                "llm": s["llm_calls"] / n,
                "prompt": s["prompt_tokens"] / n,
                "completion": s["completion_tokens"] / n,
                "tools": s["tool_calls"] / n,
                "answered": s["answered"],
                "pass": rates.get(agent),
            }
        )
    react = next((r["mean"] for r in rows if r["agent"] == "react"), None)
    compiler = next((r["mean"] for r in rows if r["agent"] == "llmcompiler"), None)
    backend = (
        f"the scripted model ({args.llm_delay:g} s a reply)"
        if args.backend == "scripted"
        else "SmolLM2-135M-Instruct (GGUF, Q4_1) on llama.cpp, 2 threads"
    )
    judge = {"gguf": "the default GGUF on llama.cpp", "none": "none"}.get(args.judge, args.judge)
    png = ROOT / "benchmarks" / f"agents_latency_{args.backend}.png"
    lines = [
        SECTIONS[args.backend],
        "",
        f"Measured {datetime.date.today()} on {machine()}. {n} StableToolBench G1 test queries "
        f"with two or more relevant APIs ({gold_calls} gold calls), one query at a time; each "
        f"tool call held {args.delay:g} s; the model: {backend}; the judge: {judge}.",
        "",
        "```bash",
        f"python benchmarks/bench_agents.py --num_queries {args.num_queries} --delay "
        f"{args.delay:g} --backend {args.backend} "
        + (f"--llm_delay {args.llm_delay:g} " if args.backend == "scripted" else "")
        + (
            f"--max_new_tokens {args.max_new_tokens} --max_steps {args.max_steps} "
            if args.backend == "gguf"
            else ""
        )
        + f"--judge {args.judge if args.judge in ('gguf', 'none') else 'URL'} --write_results",
        "```",
        "",
        "| agent | mean s/query | p90 s/query | vs ReAct | LLM calls/query | prompt tokens/query | "
        "completion tokens/query | tool calls/query | answered | pass rate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speed = f"{react / r['mean']:.2f}×" if react else "–"
        rate = "–" if r["pass"] is None else f"{r['pass']:.1f}%"
        lines.append(
            f"| {r['agent']} | {r['mean']:.2f} | {r['p90']:.2f} | {speed} | {r['llm']:.1f} | "
            f"{r['prompt']:.0f} | {r['completion']:.0f} | {r['tools']:.1f} | "
            f"{r['answered']}/{n} | {rate} |"
        )
    lines += ["", f"![latency per query]({png.name})", ""]
    if react and compiler:
        met = "met" if react / compiler >= TARGET else "missed"
        ratio = react / compiler
        how = f"{ratio:.2f}× lower" if ratio >= 1 else f"{1 / ratio:.2f}× higher"
        lines.append(
            f"LLMCompiler against ReAct: {how} mean latency (target {TARGET:g}× lower: {met})."
        )
    long = sum(len(c) >= 4 for _, c in gold)
    if args.backend == "scripted":
        lines += ["", (
            "Every design makes the same gold calls with the same model, so the differences "
            "are the designs' shapes: α-UMi and ReAct make one call per step, each after a "
            "model reply (α-UMi two: planner and caller), so a query costs about its calls × "
            "(tool time + reply time); function calling and LLMCompiler make every call in one "
            "step, at once, so a query costs about one tool time and two replies. LLMCompiler "
            "is a little faster than function calling because its first call starts while the "
            "plan is still streaming. α-UMi's roles also read the longest prompts (each role "
            "gets the tool documents and the history)."
        )]  # fmt: skip
        if long:
            lines += ["", (
                ("One query needs" if long == 1 else f"{long} queries need")
                + " four or more calls: ToolBench's depth cap "
                "(`--single_chain_max_step 12`, which counts thought nodes) ends a chain of "
                "four calls of three nodes each before its `Finish`, so the one-call-per-step "
                "designs may leave it without an answer, as ToolBench's agents would; the "
                "parallel designs make the calls in one step."
            )]  # fmt: skip
    else:
        lines += ["", (
            "With the 135M model on this CPU the model is the bound, not the tools: llama.cpp "
            "prefills a few hundred prompt tokens a second here, so a query's time follows its "
            "prompt tokens and model calls, and the untrained model writes almost no valid "
            "call, so there is nothing to run in parallel. LLMCompiler's advantage needs a "
            "model that writes valid plans and tools that are slow relative to it: a trained "
            "planner served on a GPU, as the fast-model figures above stand for. llama.cpp's "
            "server reports no token counts on a stream, so LLMCompiler's row counts its "
            "joiner's tokens only."
        )]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write_results:
        chart(rows, f"{n} queries, tools {args.delay:g} s, {args.backend} model", png)
        write_results(text, SECTIONS[args.backend])


if __name__ == "__main__":
    main()
