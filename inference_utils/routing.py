"""α-UMi's routing of one step, written once: the planner decides, then the role its decision
names writes the step's follow-up (the caller a call, the summarizer the final answer); a
give-up ends the step with the planner's turn alone.

The static pipeline's steps and the agent's multi-LLM policy both route through
:func:`route`; they differ only in the requests they build for each role (``ask``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

from inference_utils.search_requests import Generate
from process_data.protocol import FOLLOW_UP_ROLE, Decision, parse_decision

#: ``ask(role, decision)``: the request for ``role``; ``decision`` is ``None`` for the planner,
#: else the planner's decision that the role follows.
Ask = Callable[[str, Decision | None], Generate]


@dataclass(frozen=True)
class Routed:
    """One routed step: the planner's output and decision, and the follow-up role and its
    output (both ``None`` after a give-up)."""

    plan: str
    decision: Decision
    role: str | None
    follow_up: str | None


def route(ask: Ask) -> Generator[Generate, str, Routed]:
    """The planner, then the role its decision names (read by
    :func:`~process_data.protocol.parse_decision`, α-UMi's router's rules)."""
    plan = yield ask("planner", None)
    decision = parse_decision(plan)
    role = FOLLOW_UP_ROLE.get(decision.kind)
    if role is None:
        return Routed(plan, decision, None, None)
    return Routed(plan, decision, role, (yield ask(role, decision)))
