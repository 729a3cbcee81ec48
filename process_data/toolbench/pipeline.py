"""Per-record conversion and an ordered, bounded, parallel map over records.

Workers convert whole trajectories (read, stage 1, stage 2, every role, encoded output); the
parent process only writes the results in input order. The output is therefore the same
whatever the number of workers, and at most ``window`` results are in memory at once.
"""

from __future__ import annotations

import collections
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from process_data.protocol import PROMPT_TEMPLATES, ROLES, fill_tools, render_tool_docs
from process_data.toolbench.formats import TrajectoryEncoder
from process_data.toolbench.records import RecordError, Reject
from process_data.toolbench.roles import role_steps, validate_stage2
from process_data.toolbench.stage1 import AnswerFile, excluded_by, read_answer, to_stage1
from process_data.toolbench.stage2 import to_stage2


@dataclass(frozen=True)
class Options:
    """Settings shared by every record of a run (picklable, sent to the workers once)."""

    compat: bool = False
    fmt: str = "alpha_umi"
    roles: tuple[str, ...] = ROLES
    prompt_types: dict[str, str] = field(default_factory=dict)
    test_ids: dict[str, set[str]] = field(default_factory=dict)
    stages: tuple[str, ...] = ("stage1", "stage2", "roles")

    def prompt_type(self, role: str) -> str:
        return self.prompt_types.get(role) or f"toolbench_{role}"


@dataclass
class Result:
    """What one input record produced, in output order."""

    file: str
    record: str
    uid: str = ""  # unique across the run (sample ids of the chat format)
    excluded: bool = False
    stage1: str | None = None
    stage2: str | None = None
    roles: dict[str, list[Any]] = field(default_factory=dict)  # encoded samples per role
    samples: dict[str, int] = field(default_factory=dict)  # their counts
    last_input: str | None = None  # compat backbone: see roles.StaleInput
    rejects: list[Reject] = field(default_factory=list)

    @property
    def problems(self) -> list[Reject]:
        return [r for r in self.rejects if r.kind == "rejected"]

    def without_records(self) -> Result:
        """The same result without its encoded records (they were written elsewhere)."""
        return replace(self, stage1=None, stage2=None, roles={})


def reason_of(exc: Exception) -> str:
    """The rejects-report reason. Anything but a :class:`RecordError` is a shape of input the
    converters did not foresee: it is still reported per record rather than stopping the run."""
    if isinstance(exc, RecordError):
        return str(exc)
    return f"malformed record ({type(exc).__name__}: {exc})"


def convert_roles(
    record: Any, result: Result, opts: Options, encoder: TrajectoryEncoder | None = None
) -> TrajectoryEncoder | None:
    """Build and encode every requested role of one stage-2 record into ``result``."""
    try:
        tools, conversations = validate_stage2(record)
    except Exception as exc:
        for role in opts.roles:
            result.rejects.append(Reject(result.file, result.record, role, reason_of(exc)))
        return encoder
    if encoder is None:
        encoder = TrajectoryEncoder(result.uid, tools)
    encoder.set_conversations(conversations)
    docs = render_tool_docs(tools)
    for role in opts.roles:
        try:
            prompt = fill_tools(PROMPT_TEMPLATES[opts.prompt_type(role)], tools, docs)
            steps = role_steps(role, conversations, prompt, opts.compat)
            samples = encoder.role_samples(opts.fmt, steps)
        except Exception as exc:
            result.rejects.append(Reject(result.file, result.record, role, reason_of(exc)))
            continue
        for index, reason in steps.skipped:
            result.rejects.append(
                Reject(result.file, result.record, role, reason, step=index, kind="skipped")
            )
        result.roles[role] = samples
        result.samples[role] = len(samples)
        if role == "backbone":
            result.last_input = steps.last_input
    return encoder


def from_stage2(record: Any, result: Result, opts: Options) -> Result:
    convert_roles(record, result, opts)
    return result


def from_stage1(
    record: Any, result: Result, opts: Options, encoder: TrajectoryEncoder | None = None
) -> Result:
    try:
        stage2 = to_stage2(record, opts.compat)
    except Exception as exc:
        result.rejects.append(Reject(result.file, result.record, "stage2", reason_of(exc)))
        return result
    if "roles" in opts.stages:
        encoder = convert_roles(stage2, result, opts, encoder)
    if "stage2" in opts.stages:
        if encoder is None:
            encoder = TrajectoryEncoder(result.uid, stage2["tools"])
        encoder.set_conversations(stage2["conversations"])
        result.stage2 = encoder.alpha.encode_record(stage2)
    return result


def from_answer(answer: AnswerFile, opts: Options) -> Result:
    """Run one answer file through every requested stage."""
    stem = answer.name.removesuffix(".json")
    result = Result(
        answer.path, answer.query_id, f"{answer.group}/{stem}" if answer.group else stem
    )
    if opts.test_ids and excluded_by(answer, opts.test_ids, per_group=not opts.compat):
        reason = f"query id {answer.query_id} is a test query" + (
            f" of {answer.group}" if not opts.compat and answer.group else ""
        )
        result.rejects.append(
            Reject(answer.path, answer.query_id, "stage1", reason, kind="excluded")
        )
        result.excluded = True
        return result
    try:
        raw = read_answer(answer.path)
        stage1 = to_stage1(raw, opts.compat)
    except Exception as exc:
        result.rejects.append(Reject(answer.path, answer.query_id, "stage1", reason_of(exc)))
        return result
    functions = raw["answer_generation"]["function"]  # checked by to_stage1
    encoder = TrajectoryEncoder(result.uid, stage1["tools"], functions)
    if "stage1" in opts.stages:
        result.stage1 = encoder.alpha.encode_record(stage1)
    if "stage2" in opts.stages or "roles" in opts.stages:
        from_stage1(stage1, result, opts, encoder)
    return result


# --------------------------------------------------------------------------------------------
# Ordered parallel map
# --------------------------------------------------------------------------------------------

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    func: Callable[[T, Options], R],
    items: Iterable[T],
    opts: Options,
    num_workers: int = 1,
    window: int | None = None,
) -> Iterator[R]:
    """``func(item, opts)`` for each item, in input order, with ``num_workers`` processes.

    At most ``window`` items are in flight, so memory does not grow with the input size.
    ``func`` must be a module-level function so that it can be sent to the workers.
    """
    if num_workers <= 1:
        for item in items:
            yield func(item, opts)
        return
    window = window or num_workers * 4
    with multiprocessing.get_context().Pool(num_workers) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.apply_async(func, (item, opts)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
