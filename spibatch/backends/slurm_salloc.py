"""A Slurm worker block started by ``salloc`` instead of ``sbatch`` (``slurm.start: salloc``).

Slurm starts a batch job from its scheduling pass, not when ``sbatch`` hands it in: with the default
``SchedulerParameters`` (``batch_sched_delay`` 3 s, a 1-s background loop) an idle node takes 0.3-3 s to start
one.  An allocation asked by ``salloc`` is granted within the request when the nodes are free (8-12 ms on the
CI's cluster, BENCHMARKS.md "A worker block by salloc").  So the block's script -- the very script Parsl
writes for ``sbatch``, its ``#SBATCH`` lines given to ``salloc`` as options -- runs on this (the driver's)
host with the allocation's environment, and its ``srun`` starts the worker pools on the allocated nodes.
Parsl's status (``squeue``/``sacct``) and cancel (``scancel``) see the allocation as any job; a revoked
allocation (``scancel``, the walltime) ends the script and what it started here (``--kill-command=TERM``); its
``--comment`` is the script's path, as a batch job's command is (a resume cancels a killed driver's blocks by it).

salloc's own messages go to ``SCRIPT.salloc`` (the job id is read there: a user's ``--error`` or ``--quiet``
cannot hide it); the script's output to the files its ``--output``/``--error`` name (``%j``, ``%x``: the job's
id and name).  ``SBATCH_*`` input variables are given to salloc as its ``SALLOC_*`` ones.  Options salloc does
not take (``--export=NONE``, ``--array``, ``--signal=B:...``; and a ``--comment`` of the user's: spibatch's
own finds the blocks) are refused before a run (:func:`refused`);
``--export=ALL`` is dropped (the script has this environment anyway).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import threading
import time
from pathlib import Path

from parsl.providers import SlurmProvider

logger = logging.getLogger(__name__)

OUTPUT_OPTIONS = {"--output": "stdout", "-o": "stdout", "--error": "stderr", "-e": "stderr"}
DROPPED = ("--open-mode", "--parsable", "--quiet", "-Q")   # sbatch's output handling; salloc's grant line is needed
GRANTED = re.compile(r"salloc: (?:Granted|Pending) job allocation (\d+)")
ID_WAIT_S = 30.0   # salloc names the job at once (granted or pending); longer: slurmctld does not answer
STOP_WAIT_S = 10.0
# the command salloc runs: the script's output where its --output/--error say (%j, %x: the job's id and name)
WRAPPER = ('o=${1//%j/"$SLURM_JOB_ID"}; o=${o//%x/"$SLURM_JOB_NAME"}; e=${2//%j/"$SLURM_JOB_ID"}; '
           'e=${e//%x/"$SLURM_JOB_NAME"}; exec >>"$o" 2>>"$e"; exec bash "$3"')   # quoted: an & in a job name
#                                                                                   is an &, not the match


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
    """``salloc`` options from a batch script's ``#SBATCH`` lines and where the script's output goes:
    ``{"stdout": path, "stderr": path}`` (as sbatch: errors where the output goes unless ``--error`` says;
    without either, ``SCRIPT.stdout`` / ``.stderr``).  Left out: the output options, ``--export=ALL`` and
    :data:`DROPPED`; added: ``--kill-command=TERM`` and ``--comment=SCRIPT`` unless given."""
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
        if name in DROPPED or (name == "--export" and value == "ALL"):
            i += 1
            continue
        options.append(word)
        i += 1
    if not any(o.split("=")[0] in ("--kill-command", "-K") for o in options):
        options.append("--kill-command=TERM")   # a revoked allocation (scancel, walltime) ends the script's processes
    if not any(o.split("=")[0] == "--comment" for o in options):
        options.append(f"--comment={script_path}")   # what squeue's %o (the command) says of a batch job: a
    #                                                  resume finds the blocks a killed driver left by it
    if "stdout" not in outputs:
        return options, {"stdout": script_path + ".stdout", "stderr": outputs.get("stderr", script_path + ".stderr")}
    return options, {"stdout": outputs["stdout"], "stderr": outputs.get("stderr", outputs["stdout"])}


def salloc_command(script: str, script_path: str) -> list[str]:
    """The words that start the block of batch script ``script`` (at ``script_path``) by salloc."""
    options, outputs = salloc_words(script, script_path)
    return ["salloc", *options, "bash", "-c", WRAPPER, "spibatch-block", outputs["stdout"], outputs["stderr"],
            script_path]


# sbatch's options that salloc does not take (Slurm 22.05's sbatch and salloc manuals): a block by salloc
# refuses them before any work (:func:`refused`)
SBATCH_ONLY = ("--array", "-a", "--batch", "--export", "--export-file", "--ignore-pbs", "--input", "-i",
               "--kill-on-invalid-dep", "--no-requeue", "--requeue", "--propagate", "--test-only", "--wait", "-W",
               "--wrap")


def refused(options: list[str], script_path: str) -> list[str]:
    """The options of :func:`salloc_words`' list salloc does not take: :data:`SBATCH_ONLY` (``--export=NONE``:
    the script runs with this environment), ``--signal=B:...`` (no batch shell to signal); and ``--comment``,
    which salloc takes but spibatch sets to ``script_path`` (a resume on another host finds the blocks by it)."""
    out = []
    for i, option in enumerate(options):
        name, eq, value = option.partition("=")
        if not eq and name == "--signal" and i + 1 < len(options):
            value = options[i + 1]          # --signal B:USR1@60
        if name in SBATCH_ONLY or (name == "--signal" and value.upper().startswith("B")):
            out.append(option if eq or name != "--signal" else f"{option} {value}")
        elif name == "--comment" and value != script_path:
            out.append(option)
    return out


# sbatch's input variables that salloc has as SALLOC_* with the same meaning (Slurm 22.05's manuals)
SHARED_INPUTS = ("ACCOUNT", "PARTITION", "QOS", "TIMELIMIT", "RESERVATION", "CONSTRAINT", "CLUSTER_CONSTRAINT",
                 "CLUSTERS", "GRES", "GRES_FLAGS", "GPUS", "GPUS_PER_NODE", "GPUS_PER_TASK", "GPU_BIND", "GPU_FREQ",
                 "CPUS_PER_GPU", "MEM_PER_GPU", "EXCLUSIVE", "WCKEY", "REQ_SWITCH", "WAIT4SWITCH", "PROFILE",
                 "POWER", "DEBUG", "THREAD_SPEC", "CORE_SPEC")


def salloc_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with each ``SBATCH_X`` input variable of :data:`SHARED_INPUTS` also as ``SALLOC_X`` (salloc reads
    only its own; ``SBATCH_EXPORT``, ``SBATCH_SIGNAL``, ... have no salloc twin or another form)."""
    out = dict(env)
    for name in SHARED_INPUTS:
        if f"SBATCH_{name}" in env:
            out.setdefault(f"SALLOC_{name}", env[f"SBATCH_{name}"])
    return out


class SallocSlurmProvider(SlurmProvider):
    """Parsl's SlurmProvider whose ``sbatch SCRIPT`` is :func:`salloc_command` (``salloc OPTIONS bash -c
    WRAPPER ... SCRIPT``) started in the background; answers Parsl as sbatch would (``Submitted batch job N``)
    once salloc names the job in ``SCRIPT.salloc``."""

    def execute_wait(self, cmd: str, timeout=None):
        if not cmd.startswith("sbatch "):
            return super().execute_wait(cmd, timeout)
        return self._salloc(cmd[len("sbatch "):].strip())

    def _salloc(self, script_path: str):
        script = Path(script_path).read_text(encoding="utf-8")
        command = salloc_command(script, script_path)
        said_path = script_path + ".salloc"
        logger.debug("Starting the block by %s", shlex.join(command))
        with open(said_path, "ab") as said_file:
            start = said_file.tell()
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=said_file, stderr=said_file,
                                    env=salloc_env(dict(os.environ)), start_new_session=True)   # Ctrl-C: the
        threading.Thread(target=proc.wait, daemon=True, name="salloc-reaper").start()   # driver's to handle
        deadline = time.monotonic() + ID_WAIT_S
        while True:
            ended = proc.poll() is not None
            said = _read_from(said_path, start)     # read after the poll: a grant written just before the end
            found = GRANTED.search(said)
            if found:
                return 0, f"Submitted batch job {found.group(1)}\n", ""
            if ended:
                return proc.returncode or 1, "", " ".join(said.split()) or f"salloc ended with status {proc.returncode}"
            if time.monotonic() > deadline:
                proc.terminate()   # not SIGKILL: salloc gives back an allocation it was granted meanwhile
                try:
                    proc.wait(STOP_WAIT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                return 1, "", f"salloc named no job in {ID_WAIT_S:.0f} s (does slurmctld answer?): {' '.join(said.split())}"
            time.sleep(0.005)


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(65536).decode("utf-8", "replace")
    except OSError:
        return ""
