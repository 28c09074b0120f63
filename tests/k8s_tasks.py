"""Tasks the emulated-cluster tests send to worker pods (importable there through worker_init's PYTHONPATH)."""

import os
from pathlib import Path


def where_am_i(out: str, index: int) -> dict:
    """Write ``out/task-<index>.txt`` on the shared filesystem; say which process and pod env ran it."""
    Path(out, f"task-{index}.txt").write_text(f"{index * index}\n", encoding="utf-8")
    return {"pid": os.getpid(), "cwd": os.getcwd(), "run_dir": os.environ.get("SPIBATCH_RUN_DIR"),
            "home": os.environ.get("HOME"), "square": index * index, "net": os.readlink("/proc/self/ns/net")}


def nothing() -> None:
    """An empty task: what dispatch costs."""
    return None
