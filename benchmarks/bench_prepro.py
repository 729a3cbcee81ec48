"""Preprocessing benchmark: ``process_data.toolbench all`` against α-UMi's sequential scripts.

The 15 real ToolBench DFS answers beside the repository are replicated (hard links, or copies)
to ``--num_files`` answer files with new query ids in a temporary folder. Each configuration
runs as its own subprocess; wall time and peak RSS (sum over the process tree, polled every
20 ms) are measured:

* ours with 1 and 2 workers (outputs must be byte-identical), and with ``--compat alpha_umi``;
* the α-UMi baseline: six separate processes in sequence, as α-UMi's shell script runs its
  scripts: stage 1, stage 2 and one per role, each loading the whole previous file with
  ``json.load`` and writing its output with ``json.dump(..., indent=2)``. The conversions are
  ours (``compat=True``); only the structure is α-UMi's;
* ours with 1 worker on a quarter of the files, to show how memory grows with the input.

    python benchmarks/bench_prepro.py [--num_files 10000] [--repeat 3] [--work_dir DIR] [--keep]
        [--write_results]
"""

from __future__ import annotations

import argparse
import datetime
import filecmp
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "toolbench" / "data_example"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Preprocessing (process_data)"
ROLES = ("backbone", "planner", "caller", "summarizer")
BASELINE_STEPS = ("stage1", "stage2", *ROLES)
MIB = 1024 * 1024


@dataclass
class Measure:
    name: str
    files: int
    seconds: float
    cpu_seconds: float
    tree_rss: int  # peak of the summed RSS of the process tree, bytes
    single_rss: int  # peak RSS of any single process, bytes

    @property
    def rate(self) -> float:
        return self.files / self.seconds


def replicate(dest: Path, num_files: int) -> Path:
    """``dest/answer/G*_answer/<i>_ChatGPT_DFS_woFilter_w2.json``, cycling over the sources."""
    sources = sorted((SOURCE / "answer").glob("G*_answer/*.json"))
    if not sources:
        sys.exit(f"bench_prepro: no answer files under {SOURCE / 'answer'}")
    for i in range(num_files):
        src = sources[i % len(sources)]
        path = dest / "answer" / src.parent.name / f"{i}_ChatGPT_DFS_woFilter_w2.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, path)
        except OSError:
            shutil.copyfile(src, path)
    return dest


def run_once(cmds: list[list[str]], log: Path) -> tuple[float, float, int, int]:
    """Run ``cmds`` in sequence: wall seconds, CPU seconds (user + system, workers included),
    peak summed RSS of the process tree and peak RSS of one process."""
    seconds, tree_peak, single_peak = 0.0, 0, 0
    cpu_before = _children_cpu()
    with open(log, "a") as log_fh:
        for cmd in cmds:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_fh, stderr=subprocess.STDOUT)
            root = psutil.Process(proc.pid)
            while proc.poll() is None:
                try:
                    tree = [root, *root.children(recursive=True)]
                    rss = [p.memory_info().rss for p in tree]
                except psutil.Error:  # a process ended between listing and reading
                    rss = []
                tree_peak = max(tree_peak, sum(rss))
                single_peak = max(single_peak, *rss, 0)
                time.sleep(0.02)
            seconds += time.perf_counter() - start
            if proc.returncode not in (0, 3):  # 3: partial (the two invalid answers)
                sys.exit(f"bench_prepro: {' '.join(cmd)} exited {proc.returncode}; see {log}")
    return seconds, _children_cpu() - cpu_before, tree_peak, single_peak


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_all(
    configs: list[tuple[str, list[list[str]], int]], log: Path, repeat: int
) -> list[Measure]:
    """Run the configurations round-robin ``repeat`` times, so that slow phases of a shared
    machine hit all of them alike; report medians and peaks."""
    runs: list[list[tuple[float, float, int, int]]] = [[] for _ in configs]
    for _ in range(repeat):
        for k, (_, cmds, _) in enumerate(configs):
            runs[k].append(run_once(cmds, log))
    return [
        Measure(
            name,
            files,
            statistics.median(r[0] for r in runs[k]),
            statistics.median(r[1] for r in runs[k]),
            max(r[2] for r in runs[k]),
            max(r[3] for r in runs[k]),
        )
        for k, (name, _, files) in enumerate(configs)
    ]


def ours(data: Path, out: Path, workers: int, *extra: str) -> list[list[str]]:
    cmd = [sys.executable, "-m", "process_data.toolbench", "all", "--data_dir", str(data)]
    return [[*cmd, "--output_dir", str(out), "--num_workers", str(workers), *extra]]


def baseline(data: Path, out: Path) -> list[list[str]]:
    return [
        [sys.executable, __file__, "--baseline", step, str(data), str(out)]
        for step in BASELINE_STEPS
    ]


def baseline_step(step: str, data_dir: Path, out_dir: Path) -> None:
    """One of α-UMi's six scripts: whole-file ``json.load`` in, ``json.dump(indent=2)`` out."""
    sys.path.insert(0, str(ROOT))
    from process_data.toolbench.records import RecordError
    from process_data.toolbench.roles import build_role_steps
    from process_data.toolbench.stage1 import to_stage1
    from process_data.toolbench.stage2 import to_stage2

    out_dir.mkdir(parents=True, exist_ok=True)
    stage1, stage2 = out_dir / "raw_data_stage_1.json", out_dir / "raw_data_stage_2.json"
    records: list = []
    if step == "stage1":
        answer_dir, output = data_dir / "answer", stage1
        for group in os.listdir(answer_dir):
            for name in os.listdir(answer_dir / group):
                with open(answer_dir / group / name, encoding="utf-8") as fh:
                    answer = json.load(fh)
                try:
                    records.append(to_stage1(answer, compat=True))
                except RecordError:
                    continue
    elif step == "stage2":
        output = stage2
        with open(stage1, encoding="utf-8") as fh:
            for rec in json.load(fh):
                try:
                    records.append(to_stage2(rec, compat=True))
                except RecordError:
                    continue
    else:
        output = out_dir / f"train_{step}.json"
        with open(stage2, encoding="utf-8") as fh:
            for rec in json.load(fh):
                try:
                    steps = build_role_steps(step, rec, compat=True).steps
                except RecordError:
                    continue
                for s in steps:
                    history = rec["conversations"][: s.index]
                    sample = {"tools": rec["tools"], "history": history}
                    records.append(
                        {**sample, "input": s.input or s.fresh_input, "target": s.target}
                    )
        (out_dir / f"train_{step}.count").write_text(str(len(records)))
    with open(output, "w", encoding="utf-8") as fh:
        json.dump(records, fh, indent=2)


def same_outputs(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files.remove(Path("summary.json"))
    other = sorted(
        p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "summary.json"
    )
    return files == other and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def role_counts(summary: Path) -> dict[str, int]:
    stages = json.loads(summary.read_text())["stages"]
    return {role: stages[role]["samples"] for role in ROLES}


def table(runs: list[Measure], base: Measure) -> str:
    lines = [
        "| configuration | files | wall s | trajectories/s | CPU s | peak RSS, tree (MiB) "
        "| peak RSS, one process (MiB) | vs baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in runs:
        lines.append(
            f"| {m.name} | {m.files:,} | {m.seconds:.1f} | {m.rate:,.0f} | {m.cpu_seconds:.1f} "
            f"| {m.tree_rss / MIB:,.0f} | {m.single_rss / MIB:,.0f} | {m.rate / base.rate:.2f}× |"
        )
    return "\n".join(lines)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server a benchmark starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def write_results(text: str, section: str = SECTION) -> None:
    """Replace (or add) a benchmark's section of RESULTS.md (``text`` starts with its
    ``section`` heading), keeping the others."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    start = old.find(section)
    if start == -1:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(section))
        rest = old[end + 1 :] if end != -1 else ""
        before = old[:start].rstrip("\n") + "\n\n"
        new = before + text.rstrip("\n") + ("\n\n" + rest if rest else "")
    RESULTS.write_text(new.rstrip("\n") + "\n")


def interpretation(one: Measure, two: Measure, low: Measure, base: Measure, out: float) -> str:
    """What the numbers say, worded from the numbers themselves."""
    r1, r2 = one.rate / base.rate, two.rate / base.rate
    return (
        "The baseline re-implements the structure of α-UMi's six sequential scripts with our "
        "own conversion functions (`compat=True`), so the difference comes from the structure "
        "and the encoding: one pass instead of six, no whole-file `json.load` of the "
        "intermediate files, the tools, history turns and prompt pieces encoded once per "
        "trajectory instead of once per sample (α-UMi's `json.dump(indent=2)` runs Python's "
        f"pure-Python encoder), and orjson for the answer files. Ours is {r1:.2f}× the "
        f"baseline with 1 worker and {r2:.2f}× with 2 workers (target: 3×). Every "
        f"trajectory produces about {out / 1024:,.0f} KiB of output. With 1 worker the run is "
        f"CPU-bound ({one.cpu_seconds:.1f} CPU s in {one.seconds:.1f} s); 2 workers keep "
        f"{two.cpu_seconds / two.seconds:.1f} of the 2 cores busy but spend "
        f"{two.cpu_seconds / one.cpu_seconds:.2f}× the CPU: each record is written twice "
        "(a worker's shard, then the parent's in-order copy) and three processes share two "
        "cores, so workers pay off more on machines with more cores. CPU seconds "
        "(all processes) show the work itself. Peak memory of ours does not follow the input: "
        f"{low.tree_rss / MIB:,.0f} MiB for {low.files:,} files and "
        f"{one.tree_rss / MIB:,.0f} MiB for {one.files:,} (the list of file names grows, by "
        "about 200 bytes a file), while each baseline script holds a whole stage in memory "
        f"({base.tree_rss / MIB:,.0f} MiB for {base.files:,} files)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_files", type=int, default=10_000)
    parser.add_argument("--work_dir", type=Path, help="default: a temporary folder")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (median)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--write_results", action="store_true", help=f"update {RESULTS.name}")
    parser.add_argument("--baseline", nargs=3, metavar=("STEP", "DATA", "OUT"), help="internal")
    args = parser.parse_args()
    if args.baseline:
        step, data, out = args.baseline
        return baseline_step(step, Path(data), Path(out))

    work = Path(tempfile.mkdtemp(prefix="bench_prepro_", dir=args.work_dir))
    log = work / "log.txt"
    try:
        n, quarter = args.num_files, args.num_files // 4
        data, small = replicate(work / "data", n), replicate(work / "data_small", quarter)
        print(f"{n} answer files in {data}; log: {log}", file=sys.stderr)

        configs = [
            ("ours, 1 worker", ours(data, work / "out1", 1), n),
            ("ours, 2 workers", ours(data, work / "out2", 2), n),
            (
                "ours, 1 worker, `--compat alpha_umi`",
                ours(data, work / "outc", 1, "--compat", "alpha_umi"),
                n,
            ),
            ("ours, 1 worker", ours(small, work / "out_small", 1), quarter),
            ("α-UMi structure (6 scripts)", baseline(data, work / "outb"), n),
        ]
        one, two, comp, low, base = measure_all(configs, log, args.repeat)
        out_bytes = sum(p.stat().st_size for p in (work / "out1").rglob("*.json")) / n
        assert same_outputs(work / "out1", work / "out2"), "1 and 2 workers differ"
        counts = {r: int((work / "outb" / f"train_{r}.count").read_text()) for r in ROLES}
        assert counts == role_counts(work / "outc" / "summary.json"), counts
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    result = table([one, two, comp, low, base], base)
    print(result)
    print(f"sample counts (baseline = ours --compat): {counts}")
    if args.write_results:
        samples = ", ".join(f"{role} {count:,}" for role, count in counts.items())
        flags = f"--num_files {n} --repeat {args.repeat} --write_results"
        command = f"python benchmarks/bench_prepro.py {flags}"
        write_results(
            f"{SECTION}\n\n{datetime.date.today()}, {machine()}.\n\n"
            f"```bash\n{command}\n```\n\n"
            f"The 15 real ToolBench DFS answers (2 of them invalid) replicated to {n:,} answer "
            "files. Each configuration runs as its own subprocess; peak RSS is polled every "
            "20 ms and summed over the process tree (pages that forked workers share count "
            f"twice). The configurations run round-robin, {args.repeat} times; wall and CPU "
            "times are medians; trajectories/s is answer files per wall second.\n\n"
            f"{result}\n\n"
            f"Samples per role equal the baseline's ({samples}); the outputs of 1 and 2 "
            "workers are byte-identical.\n\n"
            f"{interpretation(one, two, low, base, out_bytes)}\n"
        )
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
