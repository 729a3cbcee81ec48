"""The demo's real-time phases on the bundled sample: the agents, then ToolEval.

    python scripts/demo_agents.py run OUT [--quick]     # the tool server and every agent
    python scripts/demo_agents.py judge OUT [--quick]   # pass rate and win rate of each

``run`` starts the tool server on the sample's tools (offline simulator, its cache in
``OUT/tools.sqlite``, its log in ``OUT/toolserver.log``) and runs each agent on the sample's
first G1 test queries with the models trained in ``OUT/glpft``, into ``OUT/agents/<agent>``;
the server is stopped however the run ends, and a server that dies is named with its signal
and the end of its log. ``judge`` converts each agent's answers and the sample's reference
answers (gpt-3.5 DFS trajectories for the same queries), then computes each one's pass rate
and each agent's win rate against the reference, with the default model as a local judge
(135M: the workflow, not a meaningful score), into ``OUT/tooleval``. ``--quick`` runs two
agents on one query and judges their pass rates only.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "data" / "toolbench_sample"
QUERIES = SAMPLE / "test_instruction" / "G1_instruction.json"
REFERENCE = SAMPLE / "answer" / "G1_answer"
TEST_SET = "G1_instruction"
JUDGE = ["--evaluator", "local:smollm2-135m", "--evaluate_times", "1", "--max_tokens", "256"]


def agents(out: Path, quick: bool) -> dict[str, list[str]]:
    """Each agent's flags: α-UMi's roles (the LoRA adapters), then the trained backbone alone
    in four designs."""
    roles = []
    for role in ("planner", "caller", "summarizer"):
        roles += [f"--{role}_model_name_or_path", str(out / "glpft" / role)]
        roles += [f"--{role}_use_lora", "True"]
    backbone = ["--backbone_model_name_or_path", str(out / "glpft" / "backbone")]
    long = ["--max_input_length", "1536", "--max_new_tokens", "64"]
    every = {
        "alpha_umi_cot": [*roles, "--method", "CoT@1"],
        "alpha_umi_dfs": [*roles, "--method", "DFS_woFilter_w2", "--max_query_count", "6"],
        "backbone_cot": [*backbone, "--method", "CoT@1"],
        "react": [*backbone, "--agent", "react", *long],
        "function_calling": [*backbone, "--agent", "function_calling", *long],
        "llmcompiler": [*backbone, "--agent", "llmcompiler", *long],
    }
    return {k: every[k] for k in ("alpha_umi_cot", "llmcompiler")} if quick else every


def method_of(flags: list[str]) -> str:
    if "llmcompiler" in flags:
        return "LLMCompiler"
    return flags[flags.index("--method") + 1] if "--method" in flags else "CoT@1"


def run(out: Path, quick: bool) -> int:
    from inference_utils.server_process import ServerProcess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "inference_utils.toolserver", "--port", str(port)]
    cmd += ["--queries", str(SAMPLE / "test_instruction"), "--cache", str(out / "tools.sqlite")]
    url = f"http://127.0.0.1:{port}"
    base = [sys.executable, "-m", "inference_utils.agent.run", "--queries", str(QUERIES)]
    base += ["--toolserver", f"{url}/virtual", "--num_queries", "1" if quick else "2"]
    base += ["--max_new_tokens", "32", "--single_chain_max_step", "6"]
    base += ["--max_input_length", "1024"]
    with ServerProcess("tool server", cmd, f"{url}/health", out / "toolserver.log") as server:
        for name, flags in agents(out, quick).items():
            print(f"-- agent {name}", flush=True)
            command = [*base, "--output_dir", str(out / "agents" / name), *flags]
            code = subprocess.call(command, cwd=ROOT)
            server.check_alive()
            if code != 0:
                print(f"demo: the agent {name} exited with {code}", file=sys.stderr)
                return code
    return 0


def judge(out: Path, quick: bool) -> int:
    from inference_utils.tooleval.convert import convert_dir
    from inference_utils.tooleval.pass_rate import main as pass_rate
    from inference_utils.tooleval.win_rate import main as win_rate

    tooleval = out / "tooleval"
    converted = tooleval / "converted"
    answers = {
        name: (out / "agents" / name, method_of(flags))
        for name, flags in agents(out, quick).items()
    }
    if not quick:  # the reference's verdicts cost most of the judge's time: not in --quick
        answers["reference"] = (REFERENCE, "DFS_woFilter_w2")
    ids: set[str] = set()
    for name, (folder, method) in answers.items():
        data = convert_dir(folder, method)
        if name != "reference":
            ids |= set(data)
        (converted / name).mkdir(parents=True, exist_ok=True)
        (converted / name / f"{TEST_SET}.json").write_text(json.dumps(data), encoding="utf-8")
    test_ids = tooleval / "test_ids"
    test_ids.mkdir(parents=True, exist_ok=True)
    (test_ids / f"{TEST_SET}.json").write_text(json.dumps(dict.fromkeys(sorted(ids), 0)))
    cache = ["--verdict_cache", str(tooleval / "verdicts.sqlite")]
    for name in answers:
        code = pass_rate(
            [
                "--converted_answer_path", str(converted / name), "--test_ids", str(test_ids),
                "--save_path", str(tooleval / "pass" / name), "--model", name, *JUDGE, *cache,
            ]
        )  # fmt: skip
        if code != 0:
            return code
    if quick:
        return 0
    for name in answers:
        if name == "reference":
            continue
        code = win_rate(
            [
                "--ref_converted_answer_path", str(converted / "reference"),
                "--output_converted_answer_path", str(converted / name),
                "--reference_model", "reference", "--output_model", name,
                "--ref_pass", str(tooleval / "pass" / "reference"),
                "--output_pass", str(tooleval / "pass" / name), "--test_ids", str(test_ids),
                "--save_path", str(tooleval / "win" / name), *JUDGE, *cache,
            ]
        )  # fmt: skip
        if code != 0:
            return code
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("run", "judge"))
    p.add_argument("out", type=Path)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    return (run if args.step == "run" else judge)(args.out, args.quick)


if __name__ == "__main__":
    sys.exit(main())
