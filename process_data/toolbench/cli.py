"""Command line: ``python -m process_data.toolbench {stage1,stage2,role,all} ...``.

Exit codes: 0 clean (everything kept, or left out on purpose), 3 partial (some records were
rejected; see the rejects report), 1 failed (nothing usable, a fatal error, or ``--strict``
stopped at a problem), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from process_data.jsonio import (
    JsonArrayError,
    JsonlWriter,
    iter_json_array,
    write_json_atomic,
)
from process_data.progress import progress
from process_data.protocol import PROMPT_TEMPLATES, ROLES
from process_data.toolbench.formats import FORMATS
from process_data.toolbench.outputs import Outputs, make_batches, process_batch
from process_data.toolbench.pipeline import (
    Options,
    Result,
    from_answer,
    from_stage1,
    from_stage2,
    ordered_map,
)
from process_data.toolbench.records import Reject
from process_data.toolbench.stage1 import find_answer_files, load_test_ids

EXIT_CLEAN, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


class StrictStop(RuntimeError):
    """``--strict`` met a problem."""


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------


@dataclass
class StageCount:
    read: int = 0
    kept: int = 0
    rejected: int = 0
    samples: int = 0
    skipped_steps: int = 0

    def as_dict(self, with_samples: bool) -> dict[str, int]:
        data = {"read": self.read, "kept": self.kept, "rejected": self.rejected}
        if with_samples:
            data.update(samples=self.samples, skipped_steps=self.skipped_steps)
        return data


@dataclass
class Tally:
    """Counts per stage and per role, in trajectories; read = kept + rejected everywhere."""

    chain: Sequence[str]  # the sequential stages of this run ("stage1", "stage2")
    roles: Sequence[str]
    read: int = 0
    kept: int = 0
    excluded: int = 0
    problems: int = 0
    stages: dict[str, StageCount] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in [*self.chain, *self.roles]:
            self.stages[name] = StageCount()

    def add(self, result: Result) -> None:
        self.read += 1
        failed = {r.stage for r in result.rejects if r.step is None}
        self.excluded += result.excluded
        self.problems += len(result.problems)
        alive = True
        for stage in self.chain:
            count = self.stages[stage]
            count.read += 1
            if stage in failed:
                count.rejected += 1
                alive = False
                break
            count.kept += 1
        all_roles = alive
        if alive:
            for role in self.roles:
                count = self.stages[role]
                count.read += 1
                count.skipped_steps += sum(
                    1 for r in result.rejects if r.stage == role and r.step is not None
                )
                if role in failed:
                    count.rejected += 1
                    all_roles = False
                else:
                    count.kept += 1
                    count.samples += result.samples.get(role, 0)
        self.kept += all_roles

    def summary(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "kept": self.kept,
            "rejected": self.read - self.kept,
            "excluded": self.excluded,
            "stages": {name: c.as_dict(name in self.roles) for name, c in self.stages.items()},
        }

    def table(self) -> str:
        lines = [
            f"{self.read} trajectories read, {self.kept} kept, {self.read - self.kept} rejected"
            f" ({self.excluded} of them excluded as test queries)",
            f"  {'stage':<12}{'read':>8}{'kept':>8}{'rejected':>10}{'samples':>9}{'skipped':>9}",
        ]
        for name, c in self.stages.items():
            extra = f"{c.samples:>9}{c.skipped_steps:>9}" if name in self.roles else ""
            lines.append(f"  {name:<12}{c.read:>8}{c.kept:>8}{c.rejected:>10}{extra}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _input_files(spec: str) -> list[str]:
    """α-UMi's ``--input_path``: comma-separated files or folders of ``.json`` files."""
    files: list[str] = []
    for part in filter(None, spec.split(",")):
        path = Path(part)
        if path.is_dir():
            files += sorted(str(p) for p in path.rglob("*.json"))
        elif path.is_file():
            files.append(str(path))
        else:
            raise FileNotFoundError(f"{part}: no such file or folder")
    return files


@dataclass(frozen=True)
class ArrayItem:
    """One record of an input JSON array, or the error that stopped reading the file."""

    file: str
    index: int
    record: Any = None
    error: str | None = None


def iter_array_items(paths: Sequence[str]) -> Iterator[ArrayItem]:
    for path in paths:
        index = 0
        try:
            for index, record in enumerate(iter_json_array(path)):  # noqa: B007
                yield ArrayItem(path, index, record)
            # index is the last record read; nothing more to report
        except JsonArrayError as exc:
            yield ArrayItem(path, exc.index, error=exc.reason)
        except OSError as exc:
            yield ArrayItem(path, 0, error=f"cannot read file ({exc.strerror})")


def _new_result(item: ArrayItem) -> Result:
    return Result(item.file, str(item.index), f"{Path(item.file).name}:{item.index}")


def _item_result(item: ArrayItem, stage: str) -> Result | None:
    result = _new_result(item)
    if item.error is not None:
        result.rejects.append(Reject(item.file, str(item.index), stage, item.error))
        return result
    return None


def stage1_item(item: ArrayItem, opts: Options) -> Result:
    """A stage-1 record through stage 2 (and the roles, when asked)."""
    return _item_result(item, "stage2") or from_stage1(item.record, _new_result(item), opts)


def stage2_item(item: ArrayItem, opts: Options) -> Result:
    """A stage-2 record through the roles."""
    failed = _item_result(item, opts.roles[0])
    if failed is not None:
        return failed
    return from_stage2(item.record, _new_result(item), opts)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


SHARDS_PREFIX = ".partial-shards-"


def remove_dead_shards(folder: Path) -> None:
    """Remove shard folders left by runs that were killed (their process is gone)."""
    for path in folder.glob(SHARDS_PREFIX + "*"):
        pid = path.name[len(SHARDS_PREFIX) :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run(
    func: Any,
    items: Any,
    opts: Options,
    outputs: Outputs,
    tally: Tally,
    rejects_path: Path,
    num_workers: int,
    strict: bool,
    total: int | None,
    summary_path: Path | None = None,
    extra_summary: dict | None = None,
) -> int:
    """Convert every item, write the outputs, the rejects and the summary; return the exit code."""
    start = time.perf_counter()
    rejects = JsonlWriter(rejects_path)
    bar = progress(total, "traj", "process_data")

    def account(result: Result) -> None:
        for reject in result.rejects:
            rejects.write(reject.to_json())
            if strict and reject.kind == "rejected":
                where = reject.file + (f" record {reject.record}" if reject.record else "")
                raise StrictStop(f"{where} ({reject.stage}): {reject.reason}")
        tally.add(result)
        bar.update()

    try:
        if num_workers <= 1:
            for result in ordered_map(func, items, opts):
                account(result)
                outputs.write(result)
        else:
            remove_dead_shards(rejects_path.parent)
            prefix = f"{SHARDS_PREFIX}{os.getpid()}-"
            with tempfile.TemporaryDirectory(prefix=prefix, dir=rejects_path.parent) as tmp:
                batches = make_batches(func, items, tmp, outputs.streams())
                for batch in ordered_map(process_batch, batches, opts, num_workers):
                    for result in batch.results:
                        account(result)
                    outputs.add_batch(batch)
    except BaseException:
        outputs.discard()
        rejects.discard()
        raise
    finally:
        bar.close()
    outputs.commit()
    if rejects.count:
        rejects.commit()
    else:
        rejects.discard()
        rejects_path.unlink(missing_ok=True)
    summary = tally.summary()
    summary.update(
        outputs={k: str(v) for k, v in outputs.paths.items()},
        rejects=str(rejects_path) if rejects.count else None,
        seconds=round(time.perf_counter() - start, 3),
        **(extra_summary or {}),
    )
    if tally.read == 0:
        code = EXIT_FAILED
    elif tally.problems:
        code = EXIT_PARTIAL
    else:
        code = EXIT_CLEAN
    summary["status"] = {EXIT_CLEAN: "clean", EXIT_PARTIAL: "partial", EXIT_FAILED: "failed"}[code]
    if summary_path is not None:
        write_json_atomic(summary_path, summary)
    print(tally.table(), file=sys.stderr)
    if rejects.count:
        print(f"  rejects: {rejects_path} ({rejects.count} lines)", file=sys.stderr)
    if tally.read == 0:
        print("process_data: no input records found", file=sys.stderr)
    return code


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _options(
    args: argparse.Namespace,
    roles: Sequence[str],
    stages: tuple[str, ...],
    test_ids: dict | None = None,
) -> Options:
    prompt_types = {}
    if getattr(args, "prompt_type", None):
        prompt_types[roles[0]] = args.prompt_type
    return Options(
        compat=args.compat == "alpha_umi",
        fmt=getattr(args, "format", "alpha_umi"),
        roles=tuple(roles),
        prompt_types=prompt_types,
        test_ids=test_ids or {},
        stages=stages,
    )


def _answers_and_test_ids(args: argparse.Namespace) -> tuple[list, dict]:
    files = find_answer_files(args.data_dir, args.answer_dir)
    test_dir = args.test_ids_dir
    if test_dir is None and args.data_dir is not None:
        default = Path(args.data_dir) / "test_query_ids"
        test_dir = str(default) if default.is_dir() else None
    return files, (load_test_ids(test_dir) if test_dir else {})


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def cmd_stage1(args: argparse.Namespace) -> int:
    files, test_ids = _answers_and_test_ids(args)
    opts = _options(args, (), ("stage1",), test_ids)
    out = Path(args.output_path)
    return run(
        from_answer,
        files,
        opts,
        Outputs.to_files({"stage1": out}, opts.fmt, ()),
        Tally(["stage1"], ()),
        _sidecar(out, ".rejects.jsonl"),
        args.num_workers,
        args.strict,
        len(files),
    )


def cmd_stage2(args: argparse.Namespace) -> int:
    opts = _options(args, (), ("stage2",))
    out = Path(args.output_path)
    items = iter_array_items(_input_files(args.input_path))
    return run(
        stage1_item,
        items,
        opts,
        Outputs.to_files({"stage2": out}, opts.fmt, ()),
        Tally(["stage2"], ()),
        _sidecar(out, ".rejects.jsonl"),
        args.num_workers,
        args.strict,
        None,
    )


def cmd_role(args: argparse.Namespace) -> int:
    opts = _options(args, (args.role,), ("roles",))
    out = Path(args.output_path)
    items = iter_array_items(_input_files(args.input_path))
    return run(
        stage2_item,
        items,
        opts,
        Outputs.to_files({args.role: out}, opts.fmt, (args.role,)),
        Tally([], (args.role,)),
        _sidecar(out, ".rejects.jsonl"),
        args.num_workers,
        args.strict,
        None,
    )


def cmd_all(args: argparse.Namespace) -> int:
    files, test_ids = _answers_and_test_ids(args)
    roles = tuple(args.roles)
    opts = _options(args, roles, ("stage1", "stage2", "roles"), test_ids)
    out = Path(args.output_dir)
    summary_path = out / "summary.json"
    summary_path.unlink(missing_ok=True)  # no summary ⇔ the folder is not a finished run
    ext = ".jsonl" if opts.fmt == "chat" else ".json"
    paths = {
        "stage1": out / "raw_data" / "raw_data_stage_1.json",
        "stage2": out / "raw_data" / "raw_data_stage_2.json",
        **{role: out / f"train_{role}{ext}" for role in roles},
    }
    extra = {"format": opts.fmt, "compat": args.compat, "num_workers": args.num_workers}
    return run(
        from_answer,
        files,
        opts,
        Outputs.to_files(paths, opts.fmt, roles),
        Tally(["stage1", "stage2"], roles),
        out / "rejects.jsonl",
        args.num_workers,
        args.strict,
        len(files),
        summary_path,
        extra,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m process_data.toolbench",
        description="ToolBench answer trajectories → α-UMi backbone/planner/caller/summarizer "
        "training sets.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--compat",
            choices=["alpha_umi"],
            default=None,
            help="reproduce α-UMi's output byte for byte, defects included",
        )
        p.add_argument(
            "--strict",
            action="store_true",
            help="stop at the first bad record instead of reporting it",
        )
        p.add_argument("--num_workers", type=int, default=1, help="worker processes")

    def answers(p: argparse.ArgumentParser) -> None:
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--data_dir", help="ToolBench data folder (answer/G*_answer/...)")
        src.add_argument("--answer_dir", help="any folder of answer files (searched recursively)")
        p.add_argument(
            "--test_ids_dir",
            default=None,
            help="test query id folder (default: DATA_DIR/test_query_ids if present)",
        )

    p = sub.add_parser("stage1", help="answer files → tools, instruction, chains")
    answers(p)
    p.add_argument("--output_path", required=True)
    common(p)
    p.set_defaults(func=cmd_stage1)

    p = sub.add_parser("stage2", help="stage-1 records → multi-agent conversations")
    p.add_argument("--input_path", required=True, help="comma-separated files or folders")
    p.add_argument("--output_path", required=True)
    common(p)
    p.set_defaults(func=cmd_stage2)

    p = sub.add_parser("role", help="stage-2 conversations → one role's training set")
    p.add_argument("--role", choices=ROLES, required=True)
    p.add_argument("--input_path", required=True, help="comma-separated files or folders")
    p.add_argument("--output_path", required=True)
    p.add_argument(
        "--prompt_type",
        choices=sorted(PROMPT_TEMPLATES),
        default=None,
        help="prompt template (default: toolbench_<role>)",
    )
    p.add_argument("--format", choices=FORMATS, default="alpha_umi")
    common(p)
    p.set_defaults(func=cmd_role)

    p = sub.add_parser("all", help="every stage and role in one pass")
    answers(p)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--format", choices=FORMATS, default="alpha_umi")
    p.add_argument("--roles", nargs="+", choices=ROLES, default=list(ROLES))
    common(p)
    p.set_defaults(func=cmd_all)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_workers < 1:
        print("process_data: --num_workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except StrictStop as exc:
        print(f"process_data: --strict: {exc}", file=sys.stderr)
    except (FileNotFoundError, ValueError) as exc:
        print(f"process_data: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("process_data: interrupted; no output was written", file=sys.stderr)
        return 130
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
