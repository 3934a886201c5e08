"""Helpers shared by the benchmarks: rows reported as they are measured (`Report`: printed at once, appended to a
JSON-lines file, `--rows` to run a subset, rows the CPU cannot run natively skipped with a line saying so), what
this CPU can do natively, the machine's fp32 matmul peak, an OFA-base-size checkpoint written by the reference
implementation, and timing."""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VELORA_SHARED", REPO.parent / "shared"))
ORACLE_PYTHON = Path(os.environ.get("ORACLE_VENV", REPO / ".oracle-venv")) / "bin" / "python"
CACHE = REPO / "bench" / ".cache"

# OFA-base: d 768, 6+6 layers, 12 heads, resnet101, 480 px
OFA_BASE_ARGS = ["--d-model", "768", "--layers", "6", "--heads", "12", "--ffn", "3072", "--resnet", "resnet101",
                 "--image", "480"]


RESULTS = CACHE / "results"  # default folder of the JSON-lines files, one per bench


# -- what this CPU runs natively -------------------------------------------------------------------------------------

def cpu_flags() -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16() -> bool:
    """bf16 matmuls in hardware: AVX-512 BF16 or AMX (elsewhere torch emulates them, several times slower)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def int8_units() -> str:
    """What int8 matmuls run on: AMX tiles, VNNI dot products, or plain AVX2/AVX-512 multiply-adds."""
    flags = cpu_flags()
    if "amx_int8" in flags:
        return "AMX-INT8"
    if flags & {"avx512_vnni", "avx_vnni"}:
        return "VNNI"
    return "AVX-512 (no VNNI)" if "avx512f" in flags else "AVX2 (no VNNI)" if "avx2" in flags else "no AVX2"


def machine_line() -> str:
    """One line on the machine now: CPU model and vector units, cores, torch threads and the load average."""
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")),
                 platform.processor() or "unknown CPU")
    vector = "AVX-512" if "avx512f" in cpu_flags() else "AVX2" if "avx2" in cpu_flags() else "no AVX2"
    return (f"{model}, {vector}, int8 on {int8_units()}, bf16 {'native' if native_bf16() else 'emulated'}; "
            f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads; "
            f"load average {os.getloadavg()[0]:.1f}")


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_seconds() -> float:
    """User + system CPU time of this process so far: steadier than wall time while other jobs share the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- rows reported as they are measured ------------------------------------------------------------------------------

def add_report_arguments(parser: argparse.ArgumentParser, rows: Iterable[str]) -> None:
    """--rows (a subset of `rows`: names or shell patterns, comma-separated) and --jsonl (where rows go)."""
    names = list(rows)
    parser.add_argument("--rows", default=None, metavar="NAMES",
                        help="Run only these rows (comma-separated names or patterns such as 'fp32-*'); rows: "
                             + ", ".join(names))
    parser.add_argument("--jsonl", type=Path, default=None,
                        help=f"Append each row to this JSON-lines file [default: {RESULTS.relative_to(REPO)}/"
                             f"<bench>.jsonl].")
    parser.set_defaults(all_rows=names)


class Report:
    """A bench's rows, each printed as a Markdown table row the moment it is measured and appended to a JSON-lines
    file (one object per row: bench, row, values, time, load average), so a run cut short keeps what it measured.

        report = Report("inference", ["run", "samples/s"], args)
        if report.wanted("fp32-b1"):
            report.row("fp32-b1", {"run": "velora fp32 batch 1", "samples/s": 1.29})
    """

    def __init__(self, bench: str, columns: list[str], args: argparse.Namespace):
        self.bench = bench
        self.columns = columns
        self.selected = _select(args.all_rows, args.rows)
        self.path = args.jsonl or RESULTS / f"{bench}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, dict] = {}
        self._header_printed = False
        print(f"[{bench}] rows: {', '.join(self.selected)}; appending to {self.path}", flush=True)

    def wanted(self, name: str) -> bool:
        return name in self.selected

    def any_wanted(self, *patterns: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for name in self.selected for p in patterns)

    def row(self, name: str, values: dict) -> None:
        """Print and record one measured row; `values` holds the table's columns (plus any extra numbers)."""
        self.rows[name] = values
        if not self._header_printed:
            print(markdown_table(self.columns, []), flush=True)
            self._header_printed = True
        print("| " + " | ".join(_cell(values.get(c, "")) for c in self.columns) + " |", flush=True)
        self._append({"row": name, **values})

    def skip(self, name: str, reason: str) -> None:
        """Say why a selected row is not run (e.g. bf16 without bf16 units) and record that."""
        print(f"skipped {name}: {reason}", flush=True)
        self._append({"row": name, "skipped": reason})

    def note(self, text: str) -> None:
        print(text, flush=True)

    def _append(self, record: dict) -> None:
        record = {"bench": self.bench, **record, "time": datetime.datetime.now().isoformat(timespec="seconds"),
                  "load_average": round(os.getloadavg()[0], 2)}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")


def _select(names: list[str], spec: str | None) -> list[str]:
    if not spec:
        return list(names)
    patterns = [p.strip() for p in spec.split(",") if p.strip()]
    unknown = [p for p in patterns if not fnmatch.filter(names, p)]
    if unknown:
        sys.exit(f"--rows: no row matches {', '.join(unknown)}; rows: {', '.join(names)}")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


# -- measuring -------------------------------------------------------------------------------------------------------

def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GFLOP/s of an n x n matmul on this machine, measured now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def reference_checkpoint(name: str = "ofa-base-480", args: list[str] = OFA_BASE_ARGS) -> Path:
    """Random OFA weights written by the reference implementation (cached under bench/.cache)."""
    out = CACHE / name
    if not (out / "model" / "pytorch_model.bin").exists():
        assert ORACLE_PYTHON.exists(), f"reference venv missing at {ORACLE_PYTHON}: run `make oracle`"
        subprocess.run([str(ORACLE_PYTHON), str(SHARED / "oracle" / "ofa_oracle.py"), "make", str(out), *args,
                        "--seed", "0"], check=True, capture_output=True)
    return out / "model"


def run_reference(script: Path, payload: dict) -> dict:
    """Run a bench script in the reference venv; it reads JSON on stdin and prints JSON."""
    result = subprocess.run([str(ORACLE_PYTHON), str(script)], input=json.dumps(payload), capture_output=True,
                            text=True, check=False, env={**os.environ, "PYTHONPATH": str(SHARED / "oracle")})
    if result.returncode != 0:
        sys.exit(f"reference run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def best_time(fn, repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
