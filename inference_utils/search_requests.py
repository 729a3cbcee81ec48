"""What a query's search asks of the outside world.

A search is a generator: it yields these requests and is sent their results. Keeping the
search free of backends lets one search serve local models, endpoints and tests alike, and
lets a driver batch the requests of many queries deterministically.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

from inference_utils.backends import Decoding, ModelRequest
from process_data.protocol import Observation, PlanCall


@dataclass(frozen=True)
class Generate:
    """One LLM call: the role and what its backend is given.

    The driver sends back the generated text (``str``), cleaned as the static pipeline
    cleans it, or with ``full`` the :class:`~inference_utils.backends.ModelResult` (a
    function-calling agent reads its tool calls).
    """

    role: str  # "planner" | "caller" | "summarizer" | "backbone"
    prompt: str | None  # the text prompt (α-UMi's: process_data.protocol.build_prompt)
    messages: tuple | None = None  # the chat-format messages (chat endpoints), else None
    tools: tuple | None = None  # chat-format tools for roles that call tools, else None
    # (query_id, role): lets a local backend reuse the KV cache of this query's earlier
    # prompt for this role
    session: Hashable = None
    decoding: Decoding | None = None  # over the backend's own (a planner's stop string)
    # the driver sends the whole ModelResult (tool calls, content) instead of the text
    full: bool = False

    def model_request(self) -> ModelRequest:
        """The request as the role backend takes it."""
        return ModelRequest(
            self.prompt, self.messages, self.tools, session=self.session, decoding=self.decoding
        )


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


#: What a planned call becomes: its request, or the observation of a call that makes none
#: (an unknown function, arguments that fit no parameter), answered at once.
PlanRoute = Callable[[PlanCall], ToolRequest | Observation]


@dataclass(frozen=True)
class StreamedPlan:
    """An LLMCompiler planner call whose output is a plan, run while it is written: the
    driver reads the planner's output line by line as it streams
    (:class:`~process_data.protocol.PlanReader`) and starts each call the moment the calls
    it refers to (``$N``) have answered, while later lines are still being written.
    ``route`` turns a call into its request; ``known`` holds the observations of earlier
    rounds' calls (a replan keeps the numbering, so ``$N`` may name them).

    The driver sends back a :class:`PlanReply` once the plan has ended and every call has
    an observation."""

    generate: Generate
    route: PlanRoute
    known: Mapping[int, Observation] = field(default_factory=dict)

    @property
    def role(self) -> str:
        return self.generate.role

    @property
    def session(self) -> Hashable:
        return self.generate.session

    def model_request(self) -> ModelRequest:
        return self.generate.model_request()


@dataclass(frozen=True)
class PlanReply:
    """A streamed plan's outcome: the planner's text (up to the stop string), its calls in
    the order written (``join`` last, when written) and each call's observation, in the
    same order (``None`` for ``join``)."""

    text: str
    calls: tuple[PlanCall, ...]
    observations: tuple[Observation | None, ...]


Request = Generate | ToolRequest | ToolPlan | StreamedPlan
