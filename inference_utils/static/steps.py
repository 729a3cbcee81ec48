"""Step samples for static evaluation: one per gold planner decision, with the gold history.

Built as α-UMi's ``infer_pipeline.py`` builds them (so that results compare with its
``predictions.json``), with the prompt module shared with data processing and training:

* a sample for every planner turn that calls, concludes or gives up;
* ``model_input``: the planner prompt with the gold history so far;
* ``reference``: ``"assistant: <turn></s><caller or conclusion>: <next turn></s>"`` for a
  call or a conclusion, the bare planner turn for a give-up;
* ``dispath`` (sic, α-UMi's field name): the rendered gold history;
* ``backbone_history``: the same history as the single-LLM backbone's training prompts
  render it (planner turns merged with their calls and answers), for the backbone mode.

A step is a planner turn whose decision :func:`process_data.protocol.parse_decision` reads
from an explicit marker (gold turns carry exactly one).

The caller and summarizer prompts that follow the planner's prediction label the planner
turn ``assistant:``, as in training; α-UMi's pipeline labels it ``planner:``, a label its
models never saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from process_data.protocol import (
    ASSISTANT,
    PROMPT_TEMPLATES,
    SPEAKERS,
    fill_step,
    fill_tools,
    parse_decision,
    prompt_suffix,
    render_turn,
)
from process_data.toolbench.roles import backbone_entry


def step_samples(
    records: Iterable[dict], planner_prompt_type: str = "toolbench_planner"
) -> Iterator[dict]:
    """Step samples from stage-2 conversation records (``tools``, ``conversations``)."""
    template = PROMPT_TEMPLATES[planner_prompt_type]
    for record in records:
        conv = record["conversations"]
        prompt = fill_tools(template, record["tools"])
        history = backbone = ""
        for j, turn in enumerate(conv):
            speaker, value = turn["from"], turn["value"]
            decision = parse_decision(value) if speaker == ASSISTANT else None
            if decision is not None and decision.explicit:
                if decision.kind != "give up" and j + 1 < len(conv):
                    nxt = conv[j + 1]
                    reference = render_turn(ASSISTANT, value) + render_turn(
                        nxt["from"], nxt["value"]
                    )
                else:
                    reference = value
                yield {
                    "tools": record["tools"],
                    "instruction": record.get("instruction"),
                    "history": conv[:j],
                    "dispath": history,
                    "backbone_history": backbone,
                    "model_input": fill_step(prompt, history) + prompt_suffix("planner"),
                    "reference": reference,
                }
            history += render_turn(speaker, value) if speaker in SPEAKERS else ""
            backbone += backbone_entry(conv, j)
