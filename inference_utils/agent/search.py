"""ToolBench's searches over a query's tool calls: CoT@n and DFSDT (``DFS_woFilter_wN``).

Ported from ToolBench's ``single_chain.py``, ``DFS.py`` and ``Tree.py`` with their semantics,
including the details the answer files and the training data show: a chain's length is the
depth of its nodes (a step with a thought adds three: Thought, Action, Action Input), the
diversity prompt is shown once and then kept in the history marked ``"valid": False``, the
last model output before the call cap is dropped, and ``to_json`` writes ``is_terminal`` as
false.

Each search is a generator (see :mod:`inference_utils.search_requests`): it yields the
policy's :class:`Generate` requests and the environment's :class:`ToolRequest` requests, is
sent their results, and returns a :class:`SearchResult`. Where ToolBench calls
``llm.parse(functions)`` it runs ``yield from policy.decide(messages, functions)``, with the
messages the model sees (those marked invalid left out, as ToolBench's ChatGPT client leaves
them out); where it calls ``io_func.step`` it runs ``yield from env.step(name, arguments)``, or,
for a message holding several calls (:data:`PARALLEL_CALLS`), ``env.step_plan``, which yields
one :class:`~inference_utils.search_requests.ToolPlan` for all of them.

A query's ``query_count`` counts its steps, one per policy decision, as ToolBench counts one
``llm.parse`` per step (``self.query_count += 1`` in ``DFS.py``) whatever the policy asks of
its models: α-UMi's planner and caller make one step. ``count_role_calls=True`` counts every
:class:`Generate` request instead (two per multi-LLM step). A DFS stops at
``max_query_count``: a policy that would go past it is stopped before its request and its
step dropped, as ToolBench drops the output of the call that reaches the cap. ToolBench's
CoT has no such cap; ours has one only when it is given.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Protocol

from inference_utils.agent.environment import FINAL_ANSWER, GIVE_UP, NO_SUCH_FUNCTION, QueryEnv
from inference_utils.search_requests import Generate, Request
from process_data.protocol import (
    ACTION_INPUT_NODE,
    ACTION_NODE,
    DIVERSITY_PROMPT,
    FINISH,
    HALLUCINATED_NAME,
    THOUGHT_NODE,
)

THOUGHT, ACTION, ACTION_INPUT = THOUGHT_NODE, ACTION_NODE, ACTION_INPUT_NODE
#: The key of a policy's message that holds every call of a model output with several
#: (``--parallel_calls``, an extension beyond ToolBench): ``[{"name", "arguments"}, ...]``,
#: the message's own ``function_call`` first. The search takes it out of the message, so it
#: never reaches a prompt or an answer file.
PARALLEL_CALLS = "parallel_calls"
#: ToolBench's ``single_chain_max_step``: the deepest node of a chain.
MAX_STEPS = 12
#: ToolBench's ``max_query_count`` for a query (``run_single_task``).
MAX_QUERY_COUNT = 200
# How many levels a DFS goes back after a final answer / a give-up (DFS.py), and the value
# that unwinds the whole search (DFS.py returns 100000 at the call cap, 10000 once answered).
FINAL_ANSWER_BACK_LENGTH = 2
PRUNE_BACK_LENGTH = 2
_UNWIND_AT_CAP = 100000
_UNWIND_ANSWERED = 10000


class Policy(Protocol):
    """Turns ToolBench-style messages into the next assistant message (with
    ``function_call``), yielding the :class:`Generate` requests it needs."""

    def decide(
        self, messages: list[dict], functions: list[dict]
    ) -> Generator[Generate, str, dict]: ...


# --------------------------------------------------------------------------------------------
# The tree (ToolBench's Tree.py)
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Node:
    """One node of a search tree: a thought, a function name or its arguments with the
    observation they got. ``messages`` are the OpenAI messages of the path to this node."""

    node_type: str | None = None
    description: str = ""
    father: Node | None = None
    observation: str = ""
    observation_code: int | None = None
    is_terminal: bool = False
    pruned: bool = False
    finished: bool = False
    expand_num: int = 0
    elo: float = 1000.0
    messages: list[dict] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)
    depth: int = field(init=False)

    def __post_init__(self) -> None:
        self.depth = 0 if self.father is None else self.father.depth + 1

    def add_child(self, node_type: str, description: str) -> Node:
        """A new last child, starting from a copy of this node's messages."""
        child = Node(node_type, description, father=self, messages=list(self.messages))
        self.children.append(child)
        return child

    def size(self) -> int:
        return 1 + sum(child.size() for child in self.children)

    def max_depth(self) -> int:
        """The number of levels of the subtree (ToolBench's ``get_max_depth``)."""
        return 1 + max((child.max_depth() for child in self.children), default=0)

    def make_finish(self, inter_val: int = 1) -> None:
        """Mark this node and its ancestors finished, up to ``inter_val`` Action Input
        ancestors above this node's own step."""
        node: Node | None = self
        while node is not None:
            node.finished = True
            if node.node_type == ACTION_INPUT:
                inter_val -= 1
            if inter_val < 0:
                break
            node = node.father

    def to_json(self, use_messages: bool = False) -> dict:
        """ToolBench's node record (it always writes ``is_terminal`` as false)."""
        obj: dict = {
            "is_terminal": False,
            "pruned": self.pruned,
            "finished": self.finished,
            "depth": self.depth,
            "node_type": self.node_type,
            "description": self.description,
            "Elo": self.elo,
        }
        if self.observation != "":
            obj["observation"] = self.observation
        if self.observation_code is not None:
            obj["observation_code"] = self.observation_code
        obj["child_count"] = len(self.children)
        obj["expand_num"] = self.expand_num
        if self.node_type == ACTION_INPUT:
            obj["io_state"] = {}
        if use_messages:
            obj["messages"] = [
                m["role"] if m.get("valid") is not False else m["role"] + "_invalid"
                for m in self.messages
            ]
        return obj

    def to_json_recursive(self) -> dict:
        obj = self.to_json()
        obj["children"] = [child.to_json_recursive() for child in self.children]
        return obj

    def path(self) -> list[Node]:
        """The nodes from the root's child down to this node."""
        nodes = []
        node: Node | None = self
        while node is not None and node.father is not None:
            nodes.append(node)
            node = node.father
        return nodes[::-1]

    def chain_result(self) -> list[dict]:
        """ToolBench's ``get_chain_result_from_this_node``."""
        return [node.to_json() for node in self.path()]

    def train_messages(self) -> list[list[dict]]:
        """ToolBench's ``get_train_messages_from_this_node``: for each step of the path, the
        messages up to its assistant message, with only the last invalid message kept."""
        result = []
        for node in self.path():
            messages = list(node.messages)
            if node.node_type == ACTION_INPUT:
                while messages[-1]["role"] != "assistant":
                    messages.pop()
            elif node.node_type == THOUGHT:
                while messages[-1]["role"] == "user":
                    messages.pop()
                if messages[-1]["role"] != "assistant":
                    continue
            else:
                continue
            result.append(_keep_last_invalid(messages))
        return copy.deepcopy(result)


def _keep_last_invalid(messages: list[dict]) -> list[dict]:
    kept, seen_invalid = [], False
    for message in reversed(messages):
        if message.get("valid") is not False:
            kept.append(message)
        elif not seen_invalid:
            seen_invalid = True
            kept.append(message)
    return kept[::-1]


def tree_json(root: Node) -> dict:
    """ToolBench's ``my_tree.to_json_recursive``."""
    return {"size": root.size(), "max_length": root.max_depth(), "tree": root.to_json_recursive()}


# --------------------------------------------------------------------------------------------
# Results and methods
# --------------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """What a search found, with what its answer file needs."""

    method: str
    kind: str  # "CoT" or "DFS"
    query: str
    functions: list[dict]
    forward_args: dict
    win: bool = False
    query_count: int = 0
    total_tokens: int = 0
    root: Node | None = None  # the DFS tree
    trys: list[dict] = field(default_factory=list)  # CoT: each chain as ToolBench records it
    terminal_nodes: list[Node] = field(default_factory=list)
    give_up_nodes: list[Node] = field(default_factory=list)
    hit_query_cap: bool = False
    model_errors: int = 0  # model calls that failed and became messages (continue mode)


@dataclass(frozen=True)
class Method:
    """A ``--method`` value: ``CoT@n`` (``n`` chains) or ``DFS_woFilter_wN`` (width ``N``)."""

    name: str
    kind: str
    n: int


_COT = re.compile(r"CoT@([1-9]\d*)")
_DFS = re.compile(r"DFS_woFilter_w([1-9]\d*)")


def parse_method(text: str) -> Method:
    if match := _COT.fullmatch(text):
        return Method(text, "CoT", int(match.group(1)))
    if match := _DFS.fullmatch(text):
        return Method(text, "DFS", int(match.group(1)))
    hint = ""
    if re.fullmatch(r"DFS_w\d+", text):
        hint = " (DFS with a filter ranks candidates with extra LLM calls; it is not supported)"
    raise ValueError(
        f"unknown method {text!r}: expected CoT@n or DFS_woFilter_wN (n, N >= 1){hint}"
    )


def search(
    method: str | Method,
    policy: Policy,
    env: QueryEnv,
    *,
    max_steps: int = MAX_STEPS,
    max_query_count: int | None = None,
    count_role_calls: bool = False,
    continue_on_model_error: bool = False,
) -> Generator[Request, object, SearchResult]:
    """The search a ``--method`` names, as a generator. ``max_query_count`` ``None``:
    ToolBench's (:data:`MAX_QUERY_COUNT` for a DFS, no cap for CoT).
    ``continue_on_model_error``: a model call that failed for good becomes an assistant
    message holding the error's text and the search goes on from it, as ToolBench's ChatGPT
    client does; by default it fails the query."""
    parsed = parse_method(method) if isinstance(method, str) else method
    if parsed.kind == "CoT":
        return cot(
            policy,
            env,
            n=parsed.n,
            max_steps=max_steps,
            max_query_count=max_query_count,
            method=parsed.name,
            count_role_calls=count_role_calls,
            continue_on_model_error=continue_on_model_error,
        )
    return dfs(
        policy,
        env,
        width=parsed.n,
        max_steps=max_steps,
        max_query_count=MAX_QUERY_COUNT if max_query_count is None else max_query_count,
        method=parsed.name,
        count_role_calls=count_role_calls,
        continue_on_model_error=continue_on_model_error,
    )


# --------------------------------------------------------------------------------------------
# One step: the policy's message, the nodes it makes and the environment's observation
# --------------------------------------------------------------------------------------------


class _Run:
    """What the steps of one query share: the policy, the environment, the call count."""

    def __init__(
        self,
        policy: Policy,
        env: QueryEnv,
        max_query_count: int | None,
        count_role_calls: bool = False,
        continue_on_model_error: bool = False,
    ):
        self.policy, self.env, self.cap = policy, env, max_query_count
        self.count_role_calls = count_role_calls
        self.continue_on_model_error = continue_on_model_error
        self.query_count = 0
        self.model_errors = 0

    @property
    def at_cap(self) -> bool:
        return self.cap is not None and self.query_count >= self.cap

    def decide(self, messages: list[dict]) -> Generator[Request, object, dict | None]:
        """The policy's next message, counting the step (or each LLM call, with
        ``count_role_calls``); ``None`` when it would go past the cap (the policy is stopped
        before that request). An error thrown in for a request (a model that failed) is
        thrown into the policy, which may handle it; if it does not, the query fails, or,
        with ``continue_on_model_error``, the step's message is the error's text."""
        seen = [dict(m) for m in messages if m.get("valid") is not False]
        decision = self.policy.decide(seen, self.env.functions)
        counted = False
        try:
            request = next(decision)
            while True:
                if isinstance(request, Generate) and (self.count_role_calls or not counted):
                    if self.at_cap:
                        return None
                    self.query_count += 1
                    counted = True
                try:
                    reply = yield request
                except Exception as exc:  # a call that failed: the policy may handle it
                    try:
                        request = decision.throw(exc)
                    except StopIteration:
                        raise
                    except Exception as failed:
                        if not self.continue_on_model_error:
                            raise
                        self.model_errors += 1
                        return model_error_message(failed)
                else:
                    request = decision.send(reply)
        except StopIteration as stop:
            return _checked(stop.value)
        finally:
            decision.close()

    def expand(
        self, node: Node, message: dict, finish_back: int | None
    ) -> Generator[Request, object, Node]:
        """Add the nodes of one model message below ``node`` and run its call (ToolBench's
        loop body in ``DFS`` and ``do_chain_function``); returns the last node.

        A message with :data:`PARALLEL_CALLS` (two or more) runs them as one plan
        (:meth:`QueryEnv.step_plan`), then adds an Action and an Action Input node for each
        call in order, with the messages of consecutive calls: the message itself for the
        first, a message without a thought for each later one, each followed by its
        observation. Answer files hold them as ToolBench holds calls made one after another.
        """
        message = dict(message)
        calls = message.pop(PARALLEL_CALLS, None)
        now = node
        if message.get("content") is not None:
            now = now.add_child(THOUGHT, message["content"])
        call = message.get("function_call")
        if call is None:
            now.messages.append(message)
            return now
        if calls is not None and len(calls) >= 2:
            pairs = [(c["name"], c["arguments"]) for c in calls]
            results = yield from self.env.step_plan(pairs)
            messages = [message]
            for later in calls[1:]:
                messages.append({"role": "assistant", "content": None, "function_call": later})
        else:
            results = [(yield from self.env.step(call["name"], call["arguments"]))]
            messages = [message]
        for step, (observation, status) in zip(messages, results, strict=True):
            now = add_call(now, step, observation, status, finish_back)
        return now


def model_error_message(error: BaseException) -> dict:
    """A model call that failed for good, as ToolBench's ChatGPT client answers it when its
    tries run out (``return {"role": "assistant", "content": str(json_data)}, -1, 0`` in
    ``chatgpt_function_model.py``, where ``json_data`` is the exception the request
    returned): an assistant message with the error's text and no call."""
    return {"role": "assistant", "content": str(error)}


def add_call(
    node: Node, message: dict, observation: str, status: int, finish_back: int | None
) -> Node:
    """The Action and Action Input nodes of a call that got ``observation``, with the
    assistant message (its name replaced when it names no function) and the function
    message appended to the Action Input's messages."""
    call = message["function_call"]
    now = node.add_child(ACTION, call["name"]).add_child(ACTION_INPUT, call["arguments"])
    now.observation, now.observation_code = observation, status
    now.is_terminal = status == FINAL_ANSWER
    if status == GIVE_UP:
        now.pruned = True
    elif status == NO_SUCH_FUNCTION:
        message = {**message, "function_call": {**call, "name": HALLUCINATED_NAME}}
    elif status == FINAL_ANSWER and finish_back is not None:
        now.make_finish(finish_back)
    now.messages.append(message)
    name = message["function_call"]["name"]
    now.messages.append({"role": "function", "name": name, "content": observation})
    return now


def _checked(message: object) -> dict:
    if not isinstance(message, dict) or message.get("role") != "assistant":
        raise ValueError(f"a policy must return an assistant message, not {message!r}")
    call = message.get("function_call")
    if call is None and message.get("content") is None:
        # ToolBench fails on such a message or asks again from the same node without end
        raise ValueError("a policy must return a thought or a function call")
    if call is not None:
        call = _checked_call(call)
        message = {**message, "function_call": call}
    calls = message.get(PARALLEL_CALLS)
    if calls is not None:
        if not isinstance(calls, list) or call is None:
            raise ValueError(f"{PARALLEL_CALLS} must be a list of the message's calls")
        calls = [_checked_call(c) for c in calls]
        if calls and calls[0] != call:
            raise ValueError(f"the first of {PARALLEL_CALLS} must be the function_call")
        if any(c["name"] == FINISH for c in calls):
            raise ValueError(f"{FINISH} cannot be one of {PARALLEL_CALLS}")
        message = {**message, PARALLEL_CALLS: calls}
    return dict(message)


def _checked_call(call: object) -> dict:
    """A function call with a name and its arguments as text."""
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ValueError(f"a function_call needs a name: {call!r}")
    arguments = call.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {**call, "arguments": arguments}


# --------------------------------------------------------------------------------------------
# CoT@n (ToolBench's single_chain)
# --------------------------------------------------------------------------------------------


def cot(
    policy: Policy,
    env: QueryEnv,
    *,
    n: int = 1,
    max_steps: int = MAX_STEPS,
    answer: int = 1,
    max_query_count: int | None = None,
    method: str | None = None,
    count_role_calls: bool = False,
    continue_on_model_error: bool = False,
) -> Generator[Request, object, SearchResult]:
    """Up to ``n`` independent chains, stopping once ``answer`` of them gave an answer.

    A chain ends at ``Finish`` (an answer, or a give-up, which prunes it) or when its last
    node is ``max_steps`` deep (pruned). ToolBench sets no call cap here; ``max_query_count``
    adds one, ending the search when reached.
    """
    result = SearchResult(
        method or f"CoT@{n}",
        "CoT",
        env.query,
        env.functions,
        {"single_chain_max_step": max_steps, "pass_at": n, "answer": answer},
    )
    run = _Run(policy, env, max_query_count, count_role_calls, continue_on_model_error)
    successes = 0
    for _ in range(n):
        node = Node(ACTION_INPUT, messages=env.initial_messages())
        while True:
            message = yield from run.decide(node.messages)
            if message is None:
                node.pruned, result.hit_query_cap = True, True
                break
            node = yield from run.expand(node, message, finish_back=None)
            if node.depth >= max_steps and not node.is_terminal:
                node.pruned = True
            if node.pruned or node.is_terminal:
                break
        result.terminal_nodes.append(node)
        # ToolBench records a chain's "win" before it counts the chain's own success
        result.trys.append({"chain": node.chain_result(), "win": result.win})
        if node.observation_code == FINAL_ANSWER:
            result.win = True
            successes += 1
            if successes >= answer:
                break
        if result.hit_query_cap:
            break
    result.query_count, result.model_errors = run.query_count, run.model_errors
    return result


# --------------------------------------------------------------------------------------------
# DFSDT (ToolBench's DFS_tree_search with with_filter=False)
# --------------------------------------------------------------------------------------------


def dfs(
    policy: Policy,
    env: QueryEnv,
    *,
    width: int = 2,
    max_steps: int = MAX_STEPS,
    max_query_count: int = MAX_QUERY_COUNT,
    answer: int = 1,
    method: str | None = None,
    count_role_calls: bool = False,
    continue_on_model_error: bool = False,
) -> Generator[Request, object, SearchResult]:
    """Depth-first search in preorder: each node gets up to ``width`` children, the second
    and later ones asked for with the diversity prompt; a final answer or a give-up sends
    the search back two steps, a dead end one."""
    result = SearchResult(
        method or f"DFS_woFilter_w{width}",
        "DFS",
        env.query,
        env.functions,
        {
            "single_chain_max_step": max_steps,
            "tree_beam_size": width,
            "max_query_count": max_query_count,
            "answer": answer,
            "with_filter": False,
        },
    )
    result.root = Node(ACTION_INPUT, messages=env.initial_messages())
    run = _Run(policy, env, max_query_count, count_role_calls, continue_on_model_error)
    search = _Dfs(run, result, width, max_steps, answer)
    yield from search.visit(result.root)
    result.query_count, result.model_errors = run.query_count, run.model_errors
    return result


class _Dfs:
    def __init__(self, run: _Run, result: SearchResult, width: int, max_steps: int, answer: int):
        self.run, self.result = run, result
        self.width, self.max_steps, self.answer = width, max_steps, answer
        self.expanded = 0

    def visit(self, node: Node) -> Generator[Request, object, int]:
        """ToolBench's ``DFS``: returns how many levels the search goes back."""
        node.expand_num = self.expanded
        self.expanded += 1
        if node.depth >= self.max_steps or node.pruned or node.is_terminal:
            if node.is_terminal:
                self.result.win = True
                self.result.terminal_nodes.append(node)
                return FINAL_ANSWER_BACK_LENGTH
            node.pruned = True
            if node.observation_code == GIVE_UP:
                self.result.give_up_nodes.append(node)
                return PRUNE_BACK_LENGTH
            return 1
        for _ in range(self.width):
            diversity = diversity_message(node)
            if diversity is not None:
                node.messages.append(diversity)
            message = yield from self.run.decide(node.messages)
            if message is None or self.run.at_cap:
                self.result.hit_query_cap = True
                return _UNWIND_AT_CAP
            if diversity is not None:  # shown to this call only; kept in the history
                node.messages[-1] = {**diversity, "valid": False}
            leaf = yield from self.run.expand(node, message, FINAL_ANSWER_BACK_LENGTH)
            back = yield from self.visit(leaf)
            if len(self.result.terminal_nodes) >= self.answer:
                return _UNWIND_ANSWERED
            if back > 1:
                return back - 1
        return 1


def diversity_message(node: Node) -> dict | None:
    """The user message asking for a step unlike the node's earlier children (ToolBench's
    ``DFS``), or ``None`` when no child reached a call."""
    candidates = []
    for child in node.children:
        first = child
        while not first.is_terminal and first.node_type != ACTION_INPUT and first.children:
            first = first.children[0]
        if first.node_type == ACTION_INPUT and first.father is not None:
            candidates.append(
                {
                    "name": first.father.description,
                    "arguments": first.description,
                    "function_output": first.observation,
                    "mento-carlo-action-value": 0.0,
                }
            )
    if not candidates:
        return None
    previous = f"{json.dumps(candidates, indent=2)}\n"
    if node.observation != "":
        previous += f"again, your former observation: {node.observation}\n"
    return {"role": "user", "content": DIVERSITY_PROMPT.replace("{previous_candidate}", previous)}
