"""The machine and software a benchmark ran on: CPU model, cores, memory, versions, load average."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGES = ("spibatch", "numpy", "scipy", "numba", "parsl", "h5py", "pyzmq", "mpi4py", "cupy-cuda12x", "cupy-cuda13x",
            "pyFFTW")


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [None, None, None]


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _run(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def machine() -> dict:
    """CPU model, logical cores (and those this process may use), memory, host, OS, GPU (nvidia-smi)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = _run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"])
    return {"host": socket.gethostname(), "cpu_model": cpu_model(), "logical_cores": os.cpu_count(),
            "usable_cores": usable, "memory_bytes": memory_bytes(), "os": platform.platform(),
            "gpu": gpu.splitlines() if gpu else []}


def versions() -> dict:
    """Python, the packages that matter to the numbers, the git revision of spibatch, Slurm and MPI."""
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    repo = Path(__file__).resolve().parents[2]
    out["git_revision"] = _run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    if out["git_revision"] and _run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"]):
        out["git_revision"] += "+changes"        # a working tree with uncommitted changes measured
    out["slurm"] = _run(["sinfo", "--version"])
    mpi = _run(["mpirun", "--version"])
    out["mpirun"] = mpi.splitlines()[0] if mpi else None
    return {k: v for k, v in out.items() if v is not None}
