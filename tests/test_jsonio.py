"""The streaming writers print exactly what ``json.dump(..., indent=2)`` prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED

from process_data.jsonio import JsonArrayWriter, indent_json, iter_json_array

TRICKY = [
    {"a": [1, 2.5, None, True, False, {}, [], 'x\u00e9\U0001f600\n\t"\\', {"k": [[]]}]},
    {"b": {"c": -0.0, "d": 1e100, "e": float("inf"), "f": 10**30}},
    [],
    {},
    "s",
    3,
    [[[]]],
    [{}],
]


def real_documents() -> list:
    docs = []
    for path in sorted(SHARED.rglob("*.json"))[:80]:
        try:
            docs.append(json.loads(path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
    return docs


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_indent_json_matches_json_dumps(depth: int, shared) -> None:
    docs = real_documents() + TRICKY
    assert len(docs) > 40
    for doc in docs:
        expected = json.dumps(doc, indent=2).replace("\n", "\n" + "  " * depth)
        assert indent_json(doc, depth) == expected


@pytest.mark.parametrize("records", [[], [{"x": 1}], TRICKY])
def test_array_writer_matches_json_dump(tmp_path: Path, records: list) -> None:
    out = tmp_path / "a.json"
    writer = JsonArrayWriter(out)
    for record in records:
        writer.write(record)
    assert not out.exists()  # only the .partial file until committed
    writer.commit()
    assert out.read_text() == json.dumps(records, indent=2)
    if "inf" not in repr(records):  # ijson reads standard JSON only
        assert list(iter_json_array(out)) == json.loads(out.read_text())
