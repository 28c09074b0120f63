"""A Slurm worker block started by ``salloc`` instead of ``sbatch`` (``slurm.start: salloc``).

Slurm starts a batch job from its scheduling pass, not when ``sbatch`` hands it in: with the default
``SchedulerParameters`` (``batch_sched_delay`` 3 s, a 1-s background loop) an idle node takes 0.3-3 s to start
one.  An allocation asked by ``salloc`` is granted within the request when the nodes are free (8-12 ms on the
CI's cluster, BENCHMARKS.md "A worker block by salloc").  So the block's script -- the very script Parsl
writes for ``sbatch``, its ``#SBATCH`` lines given to ``salloc`` as options -- runs on this (the driver's)
host with the allocation's ``SLURM_*`` environment, and its ``srun`` starts the worker pools on the allocated
nodes.  Parsl's status (``squeue``/``sacct``) and cancel (``scancel``) see the allocation as any job; a revoked
allocation (``scancel``, the walltime) ends the script and what it started here (``--kill-command=TERM``); its
``--comment`` is the script's path, as a batch job's command is (a resume cancels a killed driver's blocks by it).

Differences from a batch job, which the README states: the script and its ``worker_init`` run on the login
node (the pools and every MPI rank still run on the allocation's nodes; the HPC-mode MPI pool, which only
calls ``srun``, runs on the login node); its output goes to the files its ``--output``/``--error`` name; the
``salloc`` process lives on the login node while the block does (it ends with the block, or with
``scancel``).
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import time
from pathlib import Path

from parsl.providers import SlurmProvider

logger = logging.getLogger(__name__)

OUTPUT_OPTIONS = {"--output": "stdout", "-o": "stdout", "--error": "stderr", "-e": "stderr"}
SBATCH_ONLY = ("--open-mode", "--parsable", "--wrap", "--array", "-a", "--export-file", "--requeue",
               "--no-requeue", "--test-only", "--wait", "-W", "--chdir", "-D")   # salloc refuses or means else
GRANTED = re.compile(r"salloc: (?:Granted|Pending) job allocation (\d+)")
ID_WAIT_S = 60.0   # salloc names the job at once (granted or pending); longer means slurmctld does not answer


def sbatch_lines(script: str) -> list[str]:
    """The words of a batch script's ``#SBATCH`` lines, in order (sbatch reads them up to the first command)."""
    words: list[str] = []
    for line in script.splitlines()[1:]:
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not stripped.startswith("#SBATCH")):
            continue
        if not stripped.startswith("#SBATCH"):
            break
        words += shlex.split(stripped[len("#SBATCH"):], comments=True)
    return words


def salloc_words(script: str, script_path: str) -> tuple[list[str], dict[str, str]]:
    """``salloc`` options from a batch script's ``#SBATCH`` lines (without those only sbatch has) and where the
    script's output goes: ``{"stdout": path, "stderr": path}`` (as sbatch: errors where the output goes unless
    ``--error`` says; without either, ``SCRIPT.stdout`` / ``.stderr``).

    An option salloc does not know is salloc's error, said when the block is started."""
    outputs: dict[str, str] = {}
    options: list[str] = []
    words = sbatch_lines(script)
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        takes_next = not eq and name in OUTPUT_OPTIONS and i + 1 < len(words)
        if name in OUTPUT_OPTIONS:
            path = value if eq else (words[i + 1] if takes_next else "")
            if path:
                outputs[OUTPUT_OPTIONS[name]] = path
            i += 2 if takes_next else 1
            continue
        if name in SBATCH_ONLY:
            logger.warning("salloc start: leaving out the sbatch-only option %s", word)
            i += 1
            continue
        options.append(word)
        i += 1
    if not any(o.split("=")[0] in ("--kill-command", "-K") for o in options):
        options.append("--kill-command=TERM")   # a revoked allocation (scancel, walltime) ends the script's processes
    if not any(o.split("=")[0] == "--comment" for o in options):
        options.append(f"--comment={script_path}")   # what squeue's %o (the command) says of a batch job: a
                                                     # resume finds the blocks a killed driver left by it
    if "stdout" not in outputs:
        return options, {"stdout": script_path + ".stdout", "stderr": outputs.get("stderr", script_path + ".stderr")}
    return options, {"stdout": outputs["stdout"], "stderr": outputs.get("stderr", outputs["stdout"])}  # as sbatch


class SallocSlurmProvider(SlurmProvider):
    """Parsl's SlurmProvider whose ``sbatch SCRIPT`` is ``salloc OPTIONS bash SCRIPT`` started in the
    background; answers Parsl as sbatch would (``Submitted batch job N``) once salloc names the job."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._allocations: dict[str, subprocess.Popen] = {}

    def execute_wait(self, cmd: str, timeout=None):
        if not cmd.startswith("sbatch "):
            return super().execute_wait(cmd, timeout)
        return self._salloc(cmd[len("sbatch "):].strip())

    def _salloc(self, script_path: str):
        script = Path(script_path).read_text(encoding="utf-8")
        options, outputs = salloc_words(script, script_path)
        command = ["salloc", *options, "bash", script_path]
        logger.debug("Starting the block by %s", shlex.join(command))
        with open(outputs["stdout"], "ab") as out, open(outputs["stderr"], "ab") as err:
            start = err.tell()
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)   # a Ctrl-C at the driver is the driver's to handle
        deadline = time.monotonic() + ID_WAIT_S
        while True:
            said = _read_from(outputs["stderr"], start)
            found = GRANTED.search(said)
            if found:
                self._allocations[found.group(1)] = proc
                return 0, f"Submitted batch job {found.group(1)}\n", ""
            if proc.poll() is not None:
                return proc.returncode or 1, "", said.strip() or f"salloc ended with status {proc.returncode}"
            if time.monotonic() > deadline:
                proc.kill()
                return 1, "", f"salloc named no job in {ID_WAIT_S:.0f} s (does slurmctld answer?): {said.strip()}"
            time.sleep(0.005)

    def _status(self):
        for job_id, proc in list(self._allocations.items()):
            if proc.poll() is not None:   # reaped: the block's script (or salloc) has ended
                del self._allocations[job_id]
        return super()._status()


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(65536).decode("utf-8", "replace")
    except OSError:
        return ""
