"""Helpers shared by the benchmarks: the machine's fp32 matmul peak, an OFA-base-size checkpoint written by the
reference implementation, and timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VELORA_SHARED", REPO.parent / "shared"))
ORACLE_PYTHON = Path(os.environ.get("ORACLE_VENV", REPO / ".oracle-venv")) / "bin" / "python"
CACHE = REPO / "bench" / ".cache"

# OFA-base: d 768, 6+6 layers, 12 heads, resnet101, 480 px
OFA_BASE_ARGS = ["--d-model", "768", "--layers", "6", "--heads", "12", "--ffn", "3072", "--resnet", "resnet101",
                 "--image", "480"]


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
