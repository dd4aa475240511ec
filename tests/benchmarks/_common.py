"""Shared parts of the benchmark scripts: options, the default config, machine info, table and JSON.

Importing this module puts the repository root on ``sys.path`` (the scripts run as
``python tests/benchmarks/bench_<what>.py``, where only ``tests/benchmarks`` is on the path).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS_DIR = REPO / "tests" / "benchmarks" / "results"
DEFAULT_POLICY_YAML = REPO / "configs" / "policy" / "cpu_default.yaml"


def parse_args(script: str, description: str, extra: Any = None) -> argparse.Namespace:
    """Common options: --quick, --out, --threads; ``extra(parser)`` adds script options.

    ``args.out`` is resolved: the default results file for a full run, None for --quick without --out.
    """
    name = Path(script).stem.removeprefix("bench_")
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="a few iterations on a small setup, to check that the script runs; writes no "
                        "results unless --out is given")
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON results file (default: tests/benchmarks/results/{name}.json; "
                        "none with --quick)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    if extra is not None:
        extra(p)
    args = p.parse_args()
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.out is None and not args.quick:
        args.out = RESULTS_DIR / f"{name}.json"
    return args


def load_default_policy_dict() -> dict[str, Any]:
    """``configs/policy/cpu_default.yaml`` as a plain dict (feed it to ``from_dict(PolicyConfig, ...)``)."""
    import yaml

    return yaml.safe_load(DEFAULT_POLICY_YAML.read_text())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git(*cmd: str, repo: Path = REPO) -> str | None:
    """``git -C repo <cmd>``'s output, None when git fails."""
    try:
        res = subprocess.run(["git", "-C", str(repo), *cmd], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def machine_info(threads: int, quick: bool) -> dict[str, Any]:
    """Descriptive fields recorded next to the figures.

    Runs ``git`` in a child process: a script that measures its children's peak memory calls it after
    the measured child has exited.
    """
    import torch

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "machine": _cpu_model(),
        "nproc": os.cpu_count() or 0,
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "torch_threads": threads,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": commit or "unknown",
        "git_dirty": bool(status) if status is not None else False,
        "quick": quick,
    }


def latency_stats_ms(times_s: Sequence[float]) -> dict[str, float]:
    """Seconds per call -> {"median", "p90", "p99", "mean", "min"} in milliseconds."""
    ms = np.asarray(times_s, np.float64) * 1e3
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "min": float(ms.min())}


def print_table(title: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Fixed-width table; floats with 2 decimals, first column left-aligned, the rest right-aligned."""
    cells = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]

    def fmt(row: Sequence[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    print(f"\n{title}")
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print(fmt(r))


def check_flat(results: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` naming the first figure that is not a number, a string or a bool."""
    for k, v in results.items():
        if not isinstance(v, (int, float, str, bool)):
            raise TypeError(f"result {k!r} is a {type(v).__name__}; the results object must be flat")


def finish(results: Mapping[str, Any], out: Path | None) -> None:
    """Check that ``results`` is flat, then write it as JSON to ``out`` (or say why nothing was written)."""
    check_flat(results)
    if out is None:
        print("\n--quick: no results written (pass --out FILE.json to write them)")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in results.items()}
    out.write_text(json.dumps(rounded, indent=2) + "\n")
    print(f"\nresults written to {out}")
