"""Answer files: a finished search as ToolBench writes it (``<query_id>_<method>.json``).

The fields, their order and their rules are ToolBench's (``DFS.py`` / ``single_chain.py``
``to_json(answer=True, process=True)`` and ``qa_pipeline``'s ``query``), because ToolEval's
converter and the training-data pipeline read these files: a DFS file has the ``tree``, a CoT
file the ``trys``; ``answer_generation`` holds the functions, the LLM calls (``query_count``),
the final answer (the ``Finish`` arguments) and the ``train_messages`` of the chain that gave
it, or, for a DFS that found no answer, of a give-up chosen at random. ToolBench's choice is
unseeded; here it comes from a generator seeded per query, so a re-run writes the same file.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

from inference_utils.agent.search import SearchResult, tree_json
from process_data.protocol import GIVE_ANSWER, GIVE_UP, file_name_part


def answer_path(output_dir: str | os.PathLike[str], query_id: object, method: str) -> Path:
    """Where ToolBench writes a query's answer (inside ``output_dir``: ValueError for a query
    id or method that would name a path elsewhere)."""
    name = f"{file_name_part(str(query_id), 'query id')}_{file_name_part(method, 'method')}"
    return Path(output_dir) / file_name_part(f"{name}.json", "answer file")


def answer_json(result: SearchResult, seed: object = 0) -> dict:
    """The answer file of ``result``; ``seed`` (the query id, say) picks the give-up."""
    if result.kind == "DFS":
        return _dfs_answer(result, random.Random(str(seed)))
    return _cot_answer(result)


def _candidates(result: SearchResult) -> list[list[dict]]:
    return [node.chain_result() for node in result.terminal_nodes if not node.pruned]


def _dfs_answer(result: SearchResult, rng: random.Random) -> dict:
    assert result.root is not None, "a DFS result has a tree"
    generation: dict = {
        "valid_data": False,
        "query_count": result.query_count,
        "total_tokens": result.total_tokens,
        "final_answer": "",
        "finish_type": GIVE_ANSWER,
        "function": result.functions,
        "chain": [],
    }
    answered = [node for node in result.terminal_nodes if not node.pruned]
    chosen, finish_type = (answered[0], GIVE_ANSWER) if answered else (None, "")
    if chosen is None and result.give_up_nodes:
        chosen = result.give_up_nodes[rng.randrange(len(result.give_up_nodes))]
        finish_type = GIVE_UP
    if chosen is not None:
        generation["valid_data"] = True
        generation["finish_type"] = finish_type
        generation["final_answer"] = chosen.description
        generation["train_messages"] = chosen.train_messages()
    generation["query"] = result.query
    return {
        "win": result.win,
        "tree": tree_json(result.root),
        "forward_args": result.forward_args,
        "compare_candidates": _candidates(result),
        "answer_generation": generation,
    }


def _cot_answer(result: SearchResult) -> dict:
    generation: dict = {
        "valid_data": False,
        "final_answer": "",
        "function": result.functions,
        "query_count": result.query_count,
        "total_tokens": result.total_tokens,
        "train_messages": [],
        "chain": [],
    }
    for node in result.terminal_nodes:
        if not node.pruned:
            generation["valid_data"] = True
            generation["final_answer"] = node.description
            generation["train_messages"] = node.train_messages()
            break
    generation["query"] = result.query
    return {
        "win": result.win,
        "try_count": len(result.trys),
        "trys": result.trys,
        "compare_candidates": _candidates(result),
        "forward_args": result.forward_args,
        "answer_generation": generation,
    }


def write_answer(path: str | os.PathLike[str], answer: dict) -> None:
    """Write ``answer`` as ToolBench does (``json.dump``, indent 2), atomically: the text is
    made first, written to a temporary file beside ``path``, flushed to disk and renamed over
    ``path``, so a reader (or a re-run that skips finished queries) never sees part of it."""
    target = Path(path)
    text = json.dumps(answer, indent=2)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    _sync_folder(target.parent)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
