"""What a bad record is, and how it is reported."""

from __future__ import annotations

from dataclasses import asdict, dataclass


class RecordError(ValueError):
    """A record that cannot be converted. The message is the reason shown in the rejects."""


@dataclass(frozen=True)
class Reject:
    """One line of ``rejects.jsonl``: which file and record, at which stage, and why.

    ``step`` is set when only one step of a trajectory was left out.
    ``kind`` is ``"excluded"`` for records left out on purpose (test query ids) and
    ``"rejected"`` for records that are broken.
    """

    file: str
    record: str
    stage: str
    reason: str
    step: int | None = None
    kind: str = "rejected"

    def to_json(self) -> dict:
        data = asdict(self)
        if data["step"] is None:
            del data["step"]
        return data


def require(condition: bool, reason: str) -> None:
    if not condition:
        raise RecordError(reason)


def require_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} is {type(value).__name__}, expected a string")
    return value
