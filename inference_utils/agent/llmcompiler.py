"""LLMCompiler's plan-and-execute agent (Kim et al., arXiv 2312.04511) on ToolBench queries.

A planner writes the whole plan at once, numbered calls whose arguments may name earlier
calls' outputs (``$N``), ending with ``join()``; the calls run on the task graph while the plan
is still being written, each as soon as the calls it names have answered
(:class:`~inference_utils.search_requests.StreamedPlan`). A joiner then reads the results and
answers (``Finish(...)``) or asks for a new plan (``Replan(...)``); a new plan keeps the
numbering, so ``$N`` reaches earlier rounds' outputs. The prompts and both grammars are
SqueezeAILab/LLMCompiler's (at a00c9d3), in :mod:`process_data.protocol`; their defects are not
(see the README). Planner and joiner are the ``backbone`` role, so any role backend serves
them: a local checkpoint, a LoRA adapter or an OpenAI-compatible endpoint.

The answer file is ToolBench's CoT file with one try: each call as an Action / Action Input
pair with its observation, in the order the plan wrote them, then ``Finish``, so ToolEval and
process_data read it as they read any other agent's.

A config folder holds ``config.yaml`` with the in-context examples (see
``llmcompiler_configs/README.md``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import yaml

from inference_utils.agent.environment import FINAL_ANSWER, QueryEnv, finish_observation
from inference_utils.agent.policies import finish_message
from inference_utils.agent.search import ACTION_INPUT, THOUGHT, Node, SearchResult, add_call
from inference_utils.backends import Decoding
from inference_utils.search_requests import Generate, PlanReply, Request, StreamedPlan
from process_data.protocol import (
    END_OF_PLAN,
    FINISH,
    THOUGHT_TAG,
    Observation,
    PlanCall,
    format_plan_step,
    llmcompiler_prompt,
    llmcompiler_question,
    read_joiner,
    tool_signature,
)

#: The role that plans and joins.
ROLE = "backbone"
#: The config the agent uses unless told otherwise (ToolBench's queries).
CONFIGS = Path(__file__).resolve().parent / "llmcompiler_configs"
DEFAULT_CONFIG = CONFIGS / "toolbench"
#: Their shipped configs' ``max_replans: 1`` means one plan and no replan; here it counts the
#: replans after the first plan.
MAX_REPLANS = 1


@dataclass(frozen=True)
class CompilerConfig:
    """The in-context parts of the prompts: the planner's examples (and the replanner's), and
    the joiner's instructions with examples (and the last round's, which may not replan)."""

    planner_examples: str
    joiner_prompt: str
    replan_examples: str
    joiner_prompt_final: str

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> CompilerConfig:
        path = Path(folder) / "config.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no LLMCompiler config (config.yaml) there")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a mapping of prompt parts, not {type(data).__name__}")
        for key in ("planner_examples", "joiner_prompt"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise ValueError(f"{path}: '{key}' must be non-empty text")
        for key in ("replan_examples", "joiner_prompt_final"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ValueError(f"{path}: '{key}' must be text")
        unknown = sorted(set(data) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}")
        return cls(
            data["planner_examples"],
            data["joiner_prompt"],
            data.get("replan_examples") or data["planner_examples"],
            data.get("joiner_prompt_final") or data["joiner_prompt"],
        )


def llmcompiler(
    env: QueryEnv,
    config: CompilerConfig,
    *,
    max_replans: int = MAX_REPLANS,
    method: str = "LLMCompiler",
) -> Generator[Request, object, SearchResult]:
    """One query: plan, run, join; up to ``max_replans`` more plans when the joiner asks.
    The last joiner may not replan (their ``is_final``): it answers, or gives up."""
    if max_replans < 0:
        raise ValueError(f"max_replans must be at least 0, not {max_replans}")
    result = SearchResult(method, "CoT", env.query, env.functions, {"max_replans": max_replans})
    tools = [tool_signature(f) for f in env.functions if f["name"] != FINISH]
    node = Node(ACTION_INPUT, messages=env.initial_messages())
    known: dict[int, Observation] = {}
    contexts: list[str] = []
    scratchpad = ""
    for round_ in range(max_replans + 1):
        final = round_ == max_replans
        examples = config.replan_examples if round_ else config.planner_examples
        system = llmcompiler_prompt(tools, examples, replan=bool(round_))
        question = llmcompiler_question(env.query, contexts)
        planner = Generate(
            ROLE,
            f"{system}\n\n{question}",
            ({"role": "system", "content": system}, {"role": "user", "content": question}),
            decoding=Decoding(stop=(END_OF_PLAN,)),
        )
        reply = yield StreamedPlan(planner, env.plan_request, dict(known))
        if not isinstance(reply, PlanReply):
            raise TypeError(f"a streamed plan is answered with a PlanReply, not {reply!r}")
        result.query_count += 1
        steps = []
        for call, observation in zip(reply.calls, reply.observations, strict=True):
            if observation is None:  # join
                continue
            known.setdefault(call.id, observation)
            text, status = env.observe(observation)
            node = _record(node, env, call, text, status)
            steps.append((call, text))
        scratchpad = scratchpad + "\n\n" + "".join(format_plan_step(c, t) for c, t in steps)
        scratchpad = scratchpad.strip()
        joiner = config.joiner_prompt_final if final else config.joiner_prompt
        prompt = f"{joiner}\nQuestion: {env.query}\n\n{scratchpad}\n"
        output = yield Generate(ROLE, prompt, ({"role": "user", "content": prompt},))
        result.query_count += 1
        decision = read_joiner(str(output))
        if decision.replan and not final:
            done = "\n".join(format_plan_step(c, t, with_id=True) for c, t in steps)
            contexts.append(f"{done}\n\n{THOUGHT_TAG} {decision.thought}")
            continue
        break
    answered = decision.answer and not decision.replan
    # no answer: the joiner gave up, as a ToolBench agent does
    message = finish_message(decision.thought or None, decision.answer if answered else None)
    observation, status = finish_observation(message["function_call"]["arguments"])
    if message["content"]:
        node = node.add_child(THOUGHT, message["content"])
    node = add_call(node, message, observation, status, None)
    result.terminal_nodes.append(node)
    result.trys.append({"chain": node.chain_result(), "win": False})
    result.win = status == FINAL_ANSWER
    return result


def _record(node: Node, env: QueryEnv, call: PlanCall, observation: str, status: int) -> Node:
    """A plan call that ran (or could not), as a ToolBench step: its thought, then its
    Action / Action Input nodes with the observation."""
    routed = env.plan_request(call)
    if isinstance(routed, Observation):  # it made no request: its arguments as written
        arguments = json.dumps({"args": list(call.args), **call.kwargs}, default=str)
    else:
        arguments = json.dumps(routed.tool_input, ensure_ascii=False)
    if call.thought:
        node = node.add_child(THOUGHT, call.thought)
    message = {
        "role": "assistant",
        "content": call.thought,
        "function_call": {"name": call.name, "arguments": arguments},
    }
    return add_call(node, message, observation, status, None)
