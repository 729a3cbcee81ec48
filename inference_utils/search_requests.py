"""What a query's search asks of the outside world.

A search is a generator: it yields these requests and is sent their results. Keeping the
search free of backends lets one search serve local models, endpoints and tests alike, and
lets a driver batch the requests of many queries deterministically.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from inference_utils.backends import ModelRequest


@dataclass(frozen=True)
class Generate:
    """One LLM call: the role and what its backend is given.

    The driver sends back the generated text (``str``), cleaned as the static pipeline
    cleans it.
    """

    role: str  # "planner" | "caller" | "summarizer" | "backbone"
    prompt: str  # the α-UMi text prompt (process_data.protocol.build_prompt)
    messages: tuple | None = None  # the chat-format messages (chat endpoints), else None
    tools: tuple | None = None  # chat-format tools for roles that call tools, else None
    # (query_id, role): lets a local backend reuse the KV cache of this query's earlier
    # prompt for this role
    session: Hashable = None

    def model_request(self) -> ModelRequest:
        """The request as the role backend takes it."""
        return ModelRequest(self.prompt, self.messages, self.tools, session=self.session)


@dataclass(frozen=True)
class ToolRequest:
    """One real API call for the tool server.

    The driver sends back an :class:`inference_utils.toolclient.Observation`.
    """

    category: str
    tool_name: str
    api_name: str
    tool_input: dict


@dataclass(frozen=True)
class PlannedCall:
    """One call of a :class:`ToolPlan`: ``id`` is its position in the model's output (from
    1), ``function`` the name the model called; ``request.tool_input`` may hold ``$N`` /
    ``${N}`` references to the responses of earlier calls of the plan."""

    id: int
    function: str
    request: ToolRequest


@dataclass(frozen=True)
class ToolPlan:
    """Several real API calls of one model output, run as one plan
    (:class:`inference_utils.dag.PlanRunner`): each as soon as the calls it refers to have
    answered.

    The driver sends back ``{id: Observation}`` with one observation for every call.
    """

    calls: tuple[PlannedCall, ...]


Request = Generate | ToolRequest | ToolPlan
