"""Helpers of the fault tests: commands started in a process group of their own, waiting for an EMC
checkpoint, the processes a run left behind, a folder's bytes, and a small full disk (tmpfs, or the
file-size limit where mounting is not allowed)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import h5py
import numpy as np

from platform_helpers import env


def start(*args, cwd: Path, log: Path, fsize: int | None = None, **extra) -> subprocess.Popen:
    """``python -m spibatch ARGS`` in a new session (its own process group), stdout and stderr into ``log``;
    ``fsize``: a file-size limit in bytes (RLIMIT_FSIZE) for the command and its children."""
    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "spibatch", *map(str, args)], cwd=cwd, env=env(**extra),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=limit)


def run(*args, cwd: Path, timeout: float = 600, fsize: int | None = None, **extra) -> subprocess.CompletedProcess:
    """``python -m spibatch ARGS`` to its end (see :func:`start`), stdout and stderr apart."""
    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "spibatch", *map(str, args)], cwd=cwd, env=env(**extra),
                          capture_output=True, text=True, timeout=timeout, preexec_fn=limit)


def checkpoint_iteration(emc_dir: Path) -> int:
    try:
        with h5py.File(emc_dir / "checkpoint.h5", "r") as f:
            return int(f.attrs["iteration"])
    except (OSError, KeyError):
        return 0


def wait_for(condition, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"the command ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


def lock_token(run: Path) -> str | None:
    try:
        return json.loads((run / "lock").read_text()).get("token")
    except (OSError, ValueError):
        return None


def processes() -> dict[int, tuple[int, str, bytes, str]]:
    """pid -> (process group, command line, environment, working folder) of every running process of this host."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
            state, _, pgid = stat.rsplit(")", 1)[1].split()[:3]
            if state in ("Z", "X"):
                continue
            cmdline = Path("/proc", entry, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = Path("/proc", entry, "environ").read_bytes()
            cwd = os.readlink(Path("/proc", entry, "cwd"))
        except (OSError, IndexError, ValueError):
            continue
        out[int(entry)] = (int(pgid), cmdline, environ, cwd)
    return out


def left_behind(*, group: int | None = None, token: str | None = None, path: Path | None = None,
                cwd: Path | None = None) -> list[str]:
    """The processes still running of a process group, with an owner token in their environment, with ``path``
    in their command line (Parsl's worker pools name the run's runinfo/, the MPI job its run folder), or working
    in ``cwd`` (Parsl's interchange, which renames itself, works where its driver was started: each test starts
    its commands in its own tmp_path): ``pid command`` each."""
    wanted = None if token is None else f"SPIBATCH_RUN_OWNER={token}".encode()
    found = []
    for pid, (pgid, cmdline, environ, where) in processes().items():
        if pid == os.getpid():
            continue
        if (group is not None and pgid == group) or (wanted is not None and wanted in environ.split(b"\0")) \
                or (path is not None and str(path) in cmdline) or (cwd is not None and where == str(cwd)):
            found.append(f"{pid} {cmdline[:160]}")
    return found


def wait_left_behind(timeout: float = 15, **which) -> list[str]:
    """:func:`left_behind`, asked until it is empty or ``timeout`` s passed (processes take a moment to go)."""
    deadline = time.monotonic() + timeout
    while (found := left_behind(**which)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> its bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("spibatch: error:")]


def reverse_frames(source: Path, target: Path) -> None:
    """``target``: the photons of ``source`` in reverse frame order (same shape, other data)."""
    from spibatch.io.dragonfly import photons_info, read_photons, write_photons
    from spibatch.photons import Photons

    frames = photons_info(source)[0]
    photons = read_photons(source, 0, frames)
    write_photons(target, Photons.concatenate([photons.select(k, k + 1) for k in range(frames - 1, -1, -1)]))


def models_equal(a: Path, b: Path) -> bool:
    with h5py.File(a / "checkpoint.h5") as fa, h5py.File(b / "checkpoint.h5") as fb:
        return np.array_equal(fa["model"][()], fb["model"][()]) and np.array_equal(fa["scales"][()], fb["scales"][()])


def iterations_logged(emc_dir: Path) -> tuple[list[int], list[int]]:
    """The iterations of EMC.log's table and of metrics.jsonl, in file order."""
    from spibatch.emc.records import read_log_table

    table = [int(row["iter"]) for row in read_log_table(emc_dir / "EMC.log")]
    metrics = [json.loads(line)["iteration"] for line in (emc_dir / "metrics.jsonl").read_text().splitlines()]
    return table, metrics


@contextlib.contextmanager
def small_disk(where: Path, size: int):
    """A folder on a file system of ``size`` bytes: a tmpfs mounted there (as root), unmounted afterwards.
    Yields (folder, None), or (folder, size) where mounting is not allowed: then the caller limits the
    command's file size (RLIMIT_FSIZE) to ``size`` instead, which fails writes with EFBIG."""
    folder = where / f"disk-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                 capture_output=True).returncode == 0
    try:
        yield folder, None if mounted else size
    finally:
        if mounted:
            for _ in range(50):   # a process that just ended may still hold a file there for a moment
                if subprocess.run(["umount", str(folder)], capture_output=True).returncode == 0:
                    break
                time.sleep(0.2)


@contextlib.contextmanager
def filled_after(first: Path, disk: Path, leave: int, fsize: int | None = None):
    """Another writer: once ``first`` exists, a file fills ``disk`` up to ``leave`` free bytes (a disk that others
    fill while a run writes: the run's up-front check passed).  Nothing under a file-size limit (``fsize``)."""
    stop = threading.Event()

    def fill() -> None:
        while not stop.is_set() and not first.exists():
            time.sleep(0.02)
        if not stop.is_set() and fsize is None:
            with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:   # (full already: filled)
                while shutil.disk_usage(disk).free > leave + (1 << 20):
                    f.write(b"\1" * (1 << 20))
                    f.flush()

    thread = threading.Thread(target=fill, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
