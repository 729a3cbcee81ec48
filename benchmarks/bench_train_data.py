"""Training data at ToolBench scale: tokenizing and packing replicated α-UMi samples.

ToolBench's training set is about 126,000 trajectories. Here α-UMi's real example samples of
the four roles (``train_{planner,caller,summarizer,backbone}.json``, 231 samples) are
replicated, one record at a time, into a JSON array of N samples, for each of ``--sizes``.
For each size, three runs, each in its own subprocess with an empty or a warm cache:

* tokenize: ``build_dataset`` as ``GLPFT.train`` calls it (the real SmolLM2 tokenizer,
  ``--max_length`` 4096, ``--num_proc`` processes), from a cold cache;
* tokenize, cached: the same call again, which must read the cache back;
* pack: ``pack_dataset`` on the cached tokenized samples.

Memory is polled over the process tree: the peak of the summed RSS (every 20 ms), of the
largest single process's RSS, of the summed anonymous RSS (without the file-backed pages:
the Arrow files are memory-mapped, and the pages of them a process has read count in its
RSS), and of the summed PSS (every 0.2 s; a page shared by forked processes counts once).
The size on disk of the Arrow cache is reported per kind.

    python benchmarks/bench_train_data.py [--sizes 25000,100000] [--max_length 4096]
        [--num_proc N] [--work_dir DIR] [--keep] [--write_results]
    python benchmarks/bench_train_data.py --sizes 500      # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from bench_prepro import machine, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SOURCE = ROOT.parent / "shared" / "data" / "alpha_umi" / "train-example"
ROLES = ("planner", "caller", "summarizer", "backbone")
SECTION = "## Training data at scale"
MODEL = "smollm2-135m"
GIB, MIB = 2**30, 2**20
RSS_TARGET = 2 * GIB


# --------------------------------------------------------------------------------------------
# Child process: one run
# --------------------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    from GLPFT.data import DataStats, build_dataset, pack_dataset
    from GLPFT.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model(MODEL), model_max_length=args.max_length
    )
    if args.child == "resolve":  # converts the model once, outside the measured runs
        return {}
    start, cpu = time.perf_counter(), cpu_seconds()
    dataset = build_dataset(
        str(args.data), tokenizer, args.max_length, num_proc=args.num_proc, cache_dir=args.cache
    )
    stats = DataStats.of(dataset)
    result = {"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu}
    result |= {"samples": stats.samples, "tokens": stats.tokens}
    if args.child == "pack":
        start, cpu = time.perf_counter(), cpu_seconds()
        packed = pack_dataset(dataset, args.max_length)
        result |= {"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu}
        result |= {"rows": len(packed), "packed_tokens": DataStats.of(packed).tokens}
    return result


def cpu_seconds() -> float:
    """User and system time of this process and of its finished children (the workers)."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# --------------------------------------------------------------------------------------------
# Parent: data, measures, report
# --------------------------------------------------------------------------------------------


def replicate(path: Path, count: int) -> Path:
    """A JSON array of ``count`` samples cycling over the real ones, written one at a time."""
    samples = [
        json.dumps(record)
        for role in ROLES
        for record in json.loads((SOURCE / f"train_{role}.json").read_text())
    ]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[")
        for k in range(count):
            fh.write(("," if k else "") + "\n" + samples[k % len(samples)])
        fh.write("\n]\n")
    return path


@dataclass
class Run:
    size: int
    phase: str
    seconds: float  # the run's own work, timed in the child (no interpreter start or imports)
    cpu_seconds: float  # user + system time of that work, its worker processes included
    tree_rss: int  # peak of the summed RSS of the process tree, bytes
    single_rss: int  # peak RSS of any single process, bytes
    anonymous: int  # peak of the summed anonymous RSS (RSS less file-backed pages), bytes
    pss: int  # peak of the summed proportional set size (shared pages split), bytes
    result: dict


def _pss(pid: int) -> int:
    """Proportional set size: each shared page counted once over its sharers (Linux)."""
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("Pss:"))


def measure(cmd: list[str], log: Path) -> tuple[int, int, int, int]:
    """Run ``cmd``: the peaks of its tree's summed RSS, of one process's RSS, of the tree's
    summed anonymous RSS and of its summed PSS. RSS is polled every 20 ms, PSS (costlier to
    read) every 0.2 s."""
    tree = single = anonymous = pss = 0
    with open(log, "a") as log_fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_fh, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        polls = 0
        while proc.poll() is None:
            try:
                processes = [root, *root.children(recursive=True)]
                info = [p.memory_info() for p in processes]
                if polls % 10 == 0:
                    pss = max(pss, sum(_pss(p.pid) for p in processes))
            except (psutil.Error, OSError):  # a process ended between listing and reading
                info = []
            tree = max(tree, sum(m.rss for m in info))
            single = max(single, *(m.rss for m in info), 0)
            anonymous = max(anonymous, sum(m.rss - m.shared for m in info))
            polls += 1
            time.sleep(0.02)
    if proc.returncode != 0:
        sys.exit(f"bench_train_data: {' '.join(cmd)} exited {proc.returncode}; see {log}")
    return tree, single, anonymous, pss


def run(args: argparse.Namespace, phase: str, size: int, data: Path, cache: Path, log: Path):
    out = log.with_name(f"{phase}-{size}.json")
    cmd = [sys.executable, __file__, "--child", phase, "--data", str(data), "--cache", str(cache)]
    cmd += ["--result", str(out), "--max_length", str(args.max_length)]
    cmd += ["--num_proc", str(args.num_proc)]
    peaks = measure(cmd, log)
    result = json.loads(out.read_text())
    name = {"tokenize": "tokenize", "cached": "tokenize, cached", "pack": "pack"}[phase]
    return Run(size, name, result["seconds"], result["cpu_seconds"], *peaks, result)


def cache_sizes(cache: Path) -> dict[str, int]:
    """Bytes on disk of the Arrow files: records, tokenized samples, packed rows."""
    kinds = {
        "records": "generator-*.arrow",
        "tokenized": "cache-*.arrow",
        "packed": "packed-*.arrow",
    }
    return {k: sum(p.stat().st_size for p in cache.rglob(glob)) for k, glob in kinds.items()}


def table(runs: list[Run], disk: dict[int, dict[str, int]]) -> str:
    lines = [
        "| samples | run | seconds | CPU s | samples/s | peak RSS, tree | peak RSS, one process "
        "| peak anonymous, tree | peak PSS, tree | Arrow written |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        kind = {"tokenize": ("records", "tokenized"), "pack": ("packed",)}.get(r.phase, ())
        arrow = f"{sum(disk[r.size][k] for k in kind) / MIB:,.0f} MiB" if kind else "–"
        lines.append(
            f"| {r.size:,} | {r.phase} | {r.seconds:.1f} | {r.cpu_seconds:.0f} "
            f"| {r.size / r.seconds:,.0f} | {r.tree_rss / MIB:,.0f} MiB "
            f"| {r.single_rss / MIB:,.0f} MiB | {r.anonymous / MIB:,.0f} MiB "
            f"| {r.pss / MIB:,.0f} MiB | {arrow} |"
        )
    return "\n".join(lines)


def interpretation(
    runs: list[Run], disk: dict[int, dict[str, int]], args: argparse.Namespace
) -> str:
    """What the numbers say, worded from the numbers themselves."""
    small, large = min(r.size for r in runs), max(r.size for r in runs)
    by = {(r.size, r.phase): r for r in runs}
    tok, cached, pack = (by[large, p] for p in ("tokenize", "tokenize, cached", "pack"))
    tokens = tok.result["tokens"]
    fill = pack.result["packed_tokens"] / (pack.result["rows"] * args.max_length)

    def both(phase: str, attr: str) -> str:
        values = (getattr(by[size, phase], attr) / MIB for size in (small, large))
        return " and ".join(f"{v:,.0f}" for v in values)

    top = max(r.tree_rss for r in runs)
    anon_growth = (by[large, "tokenize"].anonymous - by[small, "tokenize"].anonymous) / MIB
    return (
        f"Tokenizing {large:,} samples ({tokens:,} tokens) took {tok.seconds:.0f} s with "
        f"{args.num_proc} processes ({tokens / tok.seconds:,.0f} tokens/s, "
        f"{tok.cpu_seconds:.0f} CPU s); reading them back from the cache took "
        f"{cached.seconds:.1f} s, and packing them into {pack.result['rows']:,} rows "
        f"({fill:.0%} full) {pack.seconds:.1f} s.\n\n"
        f"Peak RSS summed over the process tree: {both('tokenize', 'tree_rss')} MiB when "
        f"tokenizing {small:,} and {large:,} samples, {both('pack', 'tree_rss')} MiB when "
        f"packing them (target: under 2 GiB, {'met' if top < RSS_TARGET else 'not met'}). "
        "Tokenizing runs four processes, all forked from the first: its tokenizing workers "
        "and their pool's manager share its pages (the interpreter, torch, transformers and "
        f"the tokenizer; the cached run, which is that process alone, peaked at "
        f"{cached.single_rss / MIB:,.0f} MiB), which the sum counts once per process; counted "
        f"once (PSS), they peaked at {both('tokenize', 'pss')} MiB. Their anonymous memory, "
        f"{both('tokenize', 'anonymous')} MiB, moved by {anon_growth:+,.0f} MiB for "
        f"{large / small:.0f}× the samples: no record and no token list is held beyond a "
        "batch, and each chunk of records has a pool of its own, whose workers exit with the "
        "pages of the records file they read. What grows with "
        "the data is file-backed: pages of the memory-mapped Arrow files, around the header "
        "of each record batch, which the first process maps when it opens the files. "
        f"Packing runs in one process, with {both('pack', 'anonymous')} MiB of anonymous "
        "memory: its bins fetch their samples from all over the memory-mapped tokenized "
        "file, whose pages then count in its RSS until it lets the file go; they are the "
        "file's, and the kernel drops them when memory is short.\n\n"
        f"The Arrow cache takes {sum(disk[large].values()) / GIB:.2f} GiB for {large:,} "
        f"samples: records {disk[large]['records'] / MIB:,.0f} MiB, tokenized samples "
        f"{disk[large]['tokenized'] / MIB:,.0f} MiB, packed rows "
        f"{disk[large]['packed'] / MIB:,.0f} MiB."
    )


def section(
    args: argparse.Namespace, runs: list[Run], disk: dict[int, dict[str, int]], minutes: float
) -> str:
    """The RESULTS.md section: setting, table, what it says."""
    flags = f"--sizes {args.sizes} --max_length {args.max_length} --write_results"
    return (
        f"{SECTION}\n\n{datetime.date.today()}, {machine()}.\n\n"
        f"```bash\npython benchmarks/bench_train_data.py {flags}\n```\n\n"
        "α-UMi's 231 example samples of the four roles, replicated to N samples in one "
        "JSON array (written one sample at a time); the SmolLM2-135M tokenizer, "
        f"`model_max_length` {args.max_length}, {args.num_proc} tokenizing processes "
        "(`GLPFT.train`'s default here: min(cores, 8)). Each run is a subprocess: "
        "*tokenize* builds the dataset as `GLPFT.train` does, from an empty cache; "
        "*tokenize, cached* repeats it; *pack* packs the cached samples. Seconds and CPU "
        "seconds are the run's own work (no interpreter start, imports or tokenizer "
        "loading; CPU includes the worker processes). Memory is polled over the process "
        "tree: summed RSS every 20 ms, the largest single process's RSS, the summed "
        "anonymous RSS (RSS less file-backed pages, such as those of the memory-mapped "
        "Arrow files), and the summed PSS every 0.2 s (a page shared by several processes "
        "counts once, in shares). *Arrow written* is the cache the run wrote (records and "
        f"tokenized samples; packed rows). The benchmark took {minutes:.0f} minutes."
        f"\n\n{table(runs, disk)}\n\n{interpretation(runs, disk, args)}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="25000,100000", help="comma-separated sample counts")
    parser.add_argument("--max_length", type=int, default=4096)
    parser.add_argument("--num_proc", type=int, help="default: GLPFT.train's, min(cores, 8)")
    parser.add_argument("--work_dir", type=Path, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--write_results", action="store_true", help="update RESULTS.md")
    parser.add_argument("--child", choices=["resolve", "tokenize", "cached", "pack"])
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.result.write_text(json.dumps(child(args)))
        return
    if args.num_proc is None:
        from GLPFT.data import cpu_count

        args.num_proc = min(cpu_count(), 8)

    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench_train_data_", dir=args.work_dir))
    log = work / "log.txt"
    print(f"work folder {work}; log: {log}", file=sys.stderr)
    runs: list[Run] = []
    disk: dict[int, dict[str, int]] = {}
    started = time.perf_counter()
    try:
        none = work / "none.json"
        cmd = [sys.executable, __file__, "--child", "resolve", "--result", str(none)]
        measure(cmd + ["--max_length", str(args.max_length)], log)
        for size in sizes:
            data = replicate(work / f"train_{size}.json", size)
            cache = work / f"cache_{size}"
            for phase in ("tokenize", "cached", "pack"):
                runs.append(run(args, phase, size, data, cache, log))
                r = runs[-1]
                print(
                    f"{size:,} {r.phase}: {r.seconds:.1f} s, tree RSS {r.tree_rss / MIB:,.0f} MiB",
                    file=sys.stderr,
                )
            disk[size] = cache_sizes(cache)
            data.unlink()
            shutil.rmtree(cache, ignore_errors=True)  # the next size needs the disk
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    minutes = (time.perf_counter() - started) / 60

    print(table(runs, disk))
    print(interpretation(runs, disk, args))
    if args.write_results:
        write_results(section(args, runs, disk, minutes), SECTION)
        print("wrote RESULTS.md", file=sys.stderr)


if __name__ == "__main__":
    main()
