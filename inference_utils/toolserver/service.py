"""What the tool server does with one call, apart from HTTP: validate, look up, answer, cache.

Sources, in order: the cache; the upstream server; the LLM simulator, or the offline simulator
when no LLM simulator is configured. Every answer a source gives is cached with its source,
and two concurrent calls with the same key share one computation, so both get the answer that
is stored. A call that no source can answer gets an error answer, which is not cached.

Nothing here keeps ``toolbench_key``: it is forwarded to the upstream server and dropped.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from process_data.protocol import (
    api_name_of,
    category_name_of,
    error_answer,
    parse_tool_input,
    standardize,
)

from .cache import AnswerCache, canonical
from .simulate import LlmSimulator, SimulationError, offline_answer
from .tools import ApiKey, ToolRegistry
from .upstream import Upstream

log = logging.getLogger(__name__)
SOURCES = ("cache", "upstream", "llm", "offline")
REQUIRED = ("category", "tool_name", "api_name")


class BadRequest(ValueError):
    """A request body that is not ToolBench's (the HTTP layer answers it with a 4xx)."""


@dataclass
class Stats:
    """Counts for ``GET /stats`` (no arguments and no keys are kept)."""

    requests: int = 0
    hits: int = 0
    misses: int = 0
    sources: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    fall_through: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "hits": self.hits,
            "misses": self.misses,
            "sources": {s: self.sources[s] for s in SOURCES},
            "errors": dict(self.errors),
            "upstream_fall_through": dict(self.fall_through),
        }


class ToolService:
    def __init__(
        self,
        registry: ToolRegistry,
        cache: AnswerCache,
        upstream: Upstream | None = None,
        simulator: LlmSimulator | None = None,
        offline: bool = True,
    ):
        self.registry, self.cache = registry, cache
        self.upstream, self.simulator = upstream, simulator
        self.offline = offline and simulator is None
        self.stats = Stats()
        self._pending: dict[tuple[ApiKey, str], asyncio.Future] = {}

    def chain(self) -> list[str]:
        """The sources asked on a cache miss, in order."""
        names = ["upstream"] if self.upstream else []
        return names + (["llm"] if self.simulator else ["offline"] if self.offline else [])

    async def call(self, body: Any) -> dict:
        """The answer to one request body (a parsed JSON value)."""
        self.stats.requests += 1
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        missing = [k for k in REQUIRED if not isinstance(body.get(k), str)]
        if missing:
            raise BadRequest(f"missing or not text: {', '.join(missing)}")
        try:
            arguments = parse_tool_input(body.get("tool_input"))
        except ValueError as exc:
            return self._error("bad_tool_input", f"Tool input parse error: {exc}")
        found = self.registry.resolve(body["category"], body["tool_name"], body["api_name"])
        key = found if isinstance(found, ApiKey) else _guess_key(body)
        args = canonical(arguments)
        try:  # on the loop: a WAL read does not wait for writers, and this one never waits
            cached = self.cache.get(key, args)
        except sqlite3.OperationalError:  # busy (a checkpoint elsewhere): wait off the loop
            cached = await asyncio.to_thread(self.cache.get, key, args, True)
        if cached is not None:
            self.stats.hits += 1
            self.stats.sources["cache"] += 1
            return cached
        if not isinstance(found, ApiKey):
            return self._error("unknown_api", found)
        self.stats.misses += 1
        pending = self._pending.get((key, args))
        if pending is not None:  # the same call is being answered: share its answer
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._pending[(key, args)] = future
        try:
            answer = await self._answer(key, arguments, args, body)
            future.set_result(answer)
            return answer
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            del self._pending[(key, args)]

    async def _answer(self, key: ApiKey, arguments: dict, args: str, body: dict) -> dict:
        spec = self.registry.get(key)
        if self.upstream is not None:
            forwarded = {**{k: body[k] for k in REQUIRED}, "tool_input": arguments, "strip": ""}
            forwarded["toolbench_key"] = key_text = str(body.get("toolbench_key") or "")
            answer, reason = await self.upstream.answer(forwarded, key_text)
            if answer is not None:
                return await self._store(key, arguments, answer, "upstream")
            self.stats.fall_through[reason.split(":")[0]] += 1
        if self.simulator is not None:
            examples = await asyncio.to_thread(self.cache.examples, key)
            try:
                answer = await asyncio.to_thread(self.simulator.answer, spec, arguments, examples)
            except SimulationError as exc:
                log.warning("simulation of %s failed: %s", key, exc)
                return self._error("simulator", f"Simulator error: {exc}")
            return await self._store(key, arguments, answer, "llm")
        if self.offline:
            answer = offline_answer(spec, arguments, args)
            return await self._store(key, arguments, answer, "offline")
        return self._error("no_source", "No source could answer this call")

    async def _store(self, key: ApiKey, arguments: dict, answer: dict, source: str) -> dict:
        stored = await asyncio.to_thread(self.cache.put, key, arguments, answer, source)
        self.stats.sources[source] += 1
        return stored

    def _error(self, kind: str, message: str) -> dict:
        self.stats.errors[kind] += 1
        return error_answer(message)


def _guess_key(body: dict) -> ApiKey:
    """The cache key of a call to an API the registry does not know (an imported cache may)."""
    category = category_name_of(body["category"])
    tool = standardize(body["tool_name"]).removesuffix(f"_for_{standardize(category)}")
    return ApiKey(category, tool, api_name_of(body["api_name"]).split(f"_for_{tool}")[0])
