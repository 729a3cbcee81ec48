"""One interface for every model call: a role backend.

``backend.generate(role, requests)`` answers a batch of :class:`ModelRequest` for one role, in
order, with :class:`ModelResult` s; ``backend.stream(role, request)`` yields the text of one
request as it is produced, and returns the whole :class:`ModelResult` (with the token counts
the backend knows) as the generator's value. The static pipeline, the real-time agent, the
judges and the tool server's simulator all call models this way, whatever serves them:

* local checkpoints, or one base with a LoRA adapter per role
  (:class:`inference_utils.generation.HFModels`, :class:`~inference_utils.generation.LoRAModels`):
  a batch is one forward pass over many prompts, with KV caches kept per session;
* OpenAI-compatible endpoints, one per role
  (:class:`inference_utils.endpoints.EndpointBackend`): each request is one
  HTTP request, and a batch's requests are sent one after another (a driver sends many
  batches of one at once instead, see ``batched``).

A request carries what its caller has: the α-UMi text ``prompt`` (the training input) and/or
chat ``messages`` (with ``tools``). The backend uses the form it speaks: a local role model or
a completions endpoint the prompt, a chat endpoint the messages (a local model given only
messages applies its chat template). ``function`` forces a call of that function and the
result's :meth:`ModelResult.arguments` reads its arguments; ``json_mode`` asks for a JSON
object in text. Role outputs (neither) are post-processed as α-UMi does
(:func:`~process_data.protocol.clean_output`).

Drivers read two properties, never a backend's type: ``batched`` (True: give one call every
request of a role that is waiting, as a batch; False: one request per call, many calls at once)
and ``concurrency`` (calls at once per role).
"""

from __future__ import annotations

from collections.abc import Generator, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from process_data.protocol import json_object


@dataclass(frozen=True)
class Decoding:
    """Decoding settings of one request, over the backend's own (``None``: the backend's).
    ``temperature`` 0 is greedy; ``seed`` makes a sampled output repeat (a judge's rounds
    each have their own). The output ends before the first of the ``stop`` strings (an
    LLMCompiler planner stops at its end-of-plan marker)."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must not be negative, not {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if any(not s for s in self.stop):
            raise ValueError("a stop string must not be empty")

    def cut(self, text: str) -> str:
        """``text`` up to the first stop string (what a server that honours ``stop``
        returns)."""
        ends = [i for i in (text.find(s) for s in self.stop) if i != -1]
        return text[: min(ends)] if ends else text


@dataclass(frozen=True)
class ModelRequest:
    """One model call. ``session`` (a query's, say) lets a local backend reuse the KV cache
    of that session's previous prompt for the same role; ``decoding`` overrides the
    backend's decoding settings for this request."""

    prompt: str | None = None
    messages: tuple[dict, ...] | None = None
    tools: tuple[dict, ...] | None = None
    function: dict | None = None
    json_mode: bool = False
    session: Hashable = None
    decoding: Decoding | None = None

    def __post_init__(self) -> None:
        if self.prompt is None and self.messages is None:
            raise ValueError("a model request needs a prompt or messages")

    @property
    def raw(self) -> bool:
        """Whether the output is kept as the model wrote it (a function's arguments, a JSON
        object), rather than post-processed as a role's output."""
        return self.function is not None or self.json_mode


@dataclass(frozen=True)
class ModelResult:
    """What a model answered: its text, the tool calls it made (``{"name", "arguments"}``,
    arguments as text), token counts where the backend knows them, and, for a chat answer,
    its content alone."""

    text: str
    tool_calls: tuple[dict, ...] = ()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # a chat answer's own text, without its tool calls (``text`` renders them too)
    content: str | None = None

    def arguments(self) -> dict:
        """The arguments of the forced function: its tool call's, else a JSON object in the
        text. Raises ValueError when there is none."""
        if self.tool_calls:
            return json_object(self.tool_calls[0]["arguments"])
        return json_object(self.text)


def cut_stream(pieces: Iterable[str], stop: Sequence[str]) -> Iterator[str]:
    """Streamed text up to the first stop string, whatever the chunking: only the end of the
    text that could begin a stop string is held back until the next piece tells, so a line
    end is passed on with the piece that holds it (a plan's reader acts on it at once)."""
    if not stop:
        yield from pieces
        return
    buffer = ""
    for piece in pieces:
        buffer += piece
        ends = [i for i in (buffer.find(s) for s in stop) if i != -1]
        if ends:
            if min(ends):
                yield buffer[: min(ends)]
            return
        hold = _stop_prefix(buffer, stop)
        if len(buffer) > hold:
            yield buffer[: len(buffer) - hold]
            buffer = buffer[len(buffer) - hold :]
    if buffer:
        yield buffer


def _stop_prefix(text: str, stop: Sequence[str]) -> int:
    """The length of the longest end of ``text`` that begins one of the stop strings."""
    return max(
        (n for s in stop for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])),
        default=0,
    )


def generate_texts(
    backend: RoleBackend,
    role: str,
    prompts: Sequence[str],
    sessions: Sequence[Hashable] | None = None,
) -> list[str]:
    """A role's outputs for α-UMi text prompts, as one batch (``sessions``: one per prompt,
    or none)."""
    sessions = sessions if sessions is not None else [None] * len(prompts)
    requests = [ModelRequest(prompt=p, session=s) for p, s in zip(prompts, sessions, strict=True)]
    return [result.text for result in backend.generate(role, requests)]


class RoleBackend(Protocol):
    """What serves the roles (see the module's docstring)."""

    batched: bool
    concurrency: int

    def generate(self, role: str, requests: Sequence[ModelRequest]) -> list[ModelResult]: ...

    def stream(self, role: str, request: ModelRequest) -> Generator[str, None, ModelResult]: ...

    def release(self, sessions: Iterable[Hashable]) -> None: ...

    def close(self) -> None: ...
