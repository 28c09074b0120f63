"""EMC in HTC mode on a REAL two-node Slurm cluster (.ci/slurm-two-nodes.sh: two slurmd daemons, n1 and n2, on
this machine, beside the CI's single-node cluster, each node in a network and UTS namespace of its own: hosts
of their own on a bridge, the filesystem shared): one batch job of two nodes, Parsl's worker pool started on
each node by srun and connecting to the interchange over the network, the EMC tasks spread over both, and the
model bit for bit the serial driver's.  EMC in HPC mode as one MPI job across the two nodes: the site's
``srun --mpi=pmix`` of two ranks, one on each node (each node's slurmd has a TmpFS of its own, where PMIx makes
the step's directory).  And an MPI job started by mpirun in the allocation (its orted on each node through
srun), whose allreduce crosses the network between the nodes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from platform_helpers import (assert_the_serial_model, final_model, markers, metrics, spibatch, write_pipeline,
                              write_site)

pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")
pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
CONF = "/etc/slurm-two-nodes/slurm.conf"
LOGS = Path("/var/spool/slurm-two-nodes/log")   # each slurmd's log (the script's STATE/log)
CONTROLLER = "10.213.77.1"                       # this host on the nodes' bridge (the script's NET.1)
SITE = """name: two-nodes
provider: slurm
workers: 2
emc_mode: htc
slurm: {partition: two, nodes: 2, cores_per_node: 1, walltime: "00:15:00", max_idletime_s: 2, strategy_period_s: 0.5}
"""


@pytest.fixture(scope="module")
def two_nodes():
    if shutil.which("slurmctld") is None or shutil.which("munged") is None or os.geteuid() != 0:
        pytest.skip("needs root and Slurm + munge (apt-get install slurm-wlm slurmctld slurmd slurm-client munge; "
                    ".ci/run does)")
    script = REPO / ".ci" / "slurm-two-nodes.sh"
    try:
        up = subprocess.run(["bash", str(script), "up"], capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr
        yield CONF
    finally:
        subprocess.run(["bash", str(script), "down"], timeout=60)


def test_htc_emc_on_two_nodes_equals_the_serial_driver(two_nodes, emc_small, emc_config, tmp_path):
    pipeline = write_pipeline(tmp_path, emc_small, starts=1)
    site = write_site(tmp_path, "two-nodes", SITE)
    run = tmp_path / "htc"
    done = spibatch("run", pipeline, "--site", site, "--out", run, "--until", "emc", cwd=tmp_path,
                    SLURM_CONF=two_nodes)
    assert done.returncode == 0, done.stderr[-3000:]
    assert markers(run)["emc"]["emc_mode"] == "htc"
    script = next(p for p in run.glob("runinfo/*/submit_scripts/parsl.tasks.block-*")
                  if p.suffix not in (".stdout", ".stderr", ".salloc"))
    assert "#SBATCH --nodes=2" in script.read_text()
    # one worker pool per node: both slurmd launched the job's srun step, and two pools registered
    job = re.search(r"JOB (\d+) ON n1", Path(f"{script}.stderr").read_text()).group(1)
    for node in ("n1", "n2"):
        log = (LOGS / f"slurmd-{node}.log").read_text()
        assert f"launch task StepId={job}.0 request" in log, node
    managers = [p for p in run.glob("runinfo/workers/tasks/block-0/*") if p.is_dir()]
    assert len(managers) == 2, managers
    # each pool ran on a host of its own and reached the interchange over the network (in a node, 127.0.0.1
    # is the node's own loopback)
    for manager in managers:
        assert f"connected to interchange via URL: tcp://{CONTROLLER}:" in (manager / "manager.log").read_text()
    registered = next(run.glob("runinfo/*/tasks/interchange.log")).read_text()
    assert sorted(re.findall(r"Registration info for manager.*'hostname': '(n\d)'", registered)) == ["n1", "n2"]
    timing = [json.loads(line) for line in (run / "emc" / "htc" / "timing.jsonl").read_text().splitlines()]
    assert [t["tasks"] for t in timing] == [4, 4, 4]

    assert_the_serial_model(run / "emc", emc_config, tmp_path)


@pytest.mark.parametrize("block_start", ["sbatch", "salloc"])
def test_hpc_emc_is_one_mpi_job_across_the_two_nodes(two_nodes, emc_small, emc_config, tmp_path, block_start):
    """Also with the blocks started by salloc (slurm.start): the MPI executor's pool then runs on this host, in
    the allocation's environment, and its srun still puts one rank on each node."""
    pipeline = write_pipeline(tmp_path, emc_small, starts=1)
    site = write_site(tmp_path, "two-nodes-hpc", SITE.replace("emc_mode: htc", "emc_mode: hpc").replace(
        "strategy_period_s: 0.5}", f"strategy_period_s: 0.5, start: {block_start}}}"))
    run = tmp_path / "hpc"
    done = spibatch("run", pipeline, "--site", site, "--out", run, "--until", "emc", cwd=tmp_path,
                    SLURM_CONF=two_nodes)
    assert done.returncode == 0, done.stderr[-3000:]
    assert markers(run)["emc"]["emc_mode"] == "hpc"
    assert [m["mpi_ranks"] for m in metrics(run / "emc")] == [2, 2, 2]     # the EMC driver's comm.Get_size()
    script = next(p for p in run.glob("runinfo/*/submit_scripts/parsl.mpi.block-*")
                  if p.suffix not in (".stdout", ".stderr", ".salloc"))
    assert "#SBATCH --nodes=2" in script.read_text()
    # the EMC job's srun (the block's first step: its worker pool runs in the batch script itself) put a rank
    # on each node: both slurmd launched a task of step <job>.0
    job = _job_of(script)
    said = Path(f"{script}.salloc")
    granted = said.exists() and f"salloc: Granted job allocation {job}" in said.read_text()
    assert granted == (block_start == "salloc")
    for node in ("n1", "n2"):
        assert f"launch task StepId={job}.0 request" in (LOGS / f"slurmd-{node}.log").read_text(), (node, job)
    serial = spibatch("emc", emc_config(tmp_path / "serial"), "--out", tmp_path / "serial" / "run", cwd=tmp_path)
    assert serial.returncode == 0, serial.stderr[-2000:]
    a, b = final_model(run / "emc"), final_model(tmp_path / "serial" / "run" / "emc")
    assert np.max(np.abs(a - b)) <= 1e-10 * np.max(np.abs(b))      # two ranks' sums vs one process's


def _job_of(script: Path) -> str:
    """The Slurm job id of the block of Parsl's batch ``script`` (parsl.<executor>.block-<n>...): Parsl's log
    says "[Scaling executor <executor>] Launched block <n> with job ID <id>"."""
    executor, block = re.match(r"parsl\.(\w+)\.block-(\d+)\.", script.name).groups()
    log = (script.parents[1] / "parsl.log").read_text()
    found = re.search(rf"\[Scaling executor {executor}\] Launched block {block} with job ID (\d+)", log)
    assert found, script
    return found.group(1)


def test_an_mpi_job_across_the_two_nodes(two_nodes, tmp_path):
    pytest.importorskip("mpi4py", reason="mpi4py not installed (pip install '.[test]')")
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun not installed (apt-get install openmpi-bin libopenmpi-dev; .ci/run does)")
    payload = 8 << 20                                       # bytes each rank sends in the allreduce
    code = ("from mpi4py import MPI; import os, socket; import numpy as np; c = MPI.COMM_WORLD; "
            f"a = np.full({payload // 8}, c.Get_rank() + 1.0); b = np.empty_like(a); c.Allreduce(a, b); "
            "print(c.Get_rank(), c.Get_size(), os.environ['SLURMD_NODENAME'], socket.gethostname(), "
            "os.readlink('/proc/self/ns/net'), int(b.min()), int(b.max()), flush=True)")
    env = dict(os.environ, SLURM_CONF=two_nodes, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    before = _veth_bytes("n2")
    done = subprocess.run(["salloc", "-N", "2", "-n", "2", "mpirun", "-n", "2", "--map-by", "node",
                           shutil.which("python3") or "python3", "-c", code],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    crossed = _veth_bytes("n2") - before
    assert done.returncode == 0, done.stdout + done.stderr
    rows = sorted(re.findall(r"(\d) (\d) (n\d) (n\d) (net:\[\d+\]) (\d) (\d)", done.stdout))  # (lines may
    assert [r[:4] + r[5:] for r in rows] == [("0", "2", "n1", "n1", "3", "3"),             # arrive unseparated)
                                             ("1", "2", "n2", "n2", "3", "3")], done.stdout
    assert len({rows[0][4], rows[1][4], os.readlink("/proc/self/ns/net")}) == 3   # two network stacks, not this one
    assert crossed >= payload, crossed       # the allreduce went over the nodes' network, not shared memory


def _veth_bytes(node: str) -> int:
    """Bytes through the host end of ``node``'s veth so far (received + sent)."""
    stats = Path(f"/sys/class/net/spibatch-{node}/statistics")
    return int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["htc", "hpc"])
def test_a_node_cut_off_the_network_mid_run_the_run_still_gets_the_serial_model(mode, two_nodes, emc_small, emc_config,
                                                                                  tmp_path):
    """n2's link goes down for 60 s in the middle of EMC; Slurm finds n2 not responding (SlurmdTimeout 20 s, well
    before Parsl's 60-s heartbeat threshold) and requeues the block's job, which ends its processes on n1 too.  HTC: n2's pool's tasks are lost (the interchange hears nothing for a
    heartbeat threshold), and the retry sent to n1's pool -- already killed, unheard for another threshold -- is
    lost as well; once n2 is back the requeued job starts and the task's third try runs (with one retry, as
    before, the run failed with ManagerLost on n1: BENCHMARKS.md).  HPC: the EMC job is lost with its block and
    sent again, and in the requeued job resumes from its checkpoint (or finds its iterations done: the first
    job may finish them before its end is heard of).  Either way the run ends with the serial driver's model.
    ~3.5 minutes each."""
    import threading
    import time

    pipeline = write_pipeline(tmp_path, emc_small, starts=1, iterations=12)
    site = write_site(tmp_path, "two-nodes", SITE.replace("emc_mode: htc", f"emc_mode: {mode}"))
    run = tmp_path / mode
    link = ["ip", "link", "set", "spibatch-n2"]

    def cut():
        deadline = time.monotonic() + 300
        while not (run / "emc" / "metrics.jsonl").exists():     # EMC iterating on both nodes
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        subprocess.run(link + ["down"], check=True)
        time.sleep(60)
        subprocess.run(link + ["up"], check=True)

    cutter = threading.Thread(target=cut, daemon=True)
    cutter.start()
    try:
        done = spibatch("run", pipeline, "--site", site, "--out", run, "--until", "emc", cwd=tmp_path,
                        SLURM_CONF=two_nodes)
    finally:
        cutter.join(120)
        subprocess.run(link + ["up"])
    assert done.returncode == 0, done.stderr[-3000:]
    lost = re.findall(r"was lost with its worker pool \(its node or batch job gone\); sending it again \(try (\d)\)",
                      (run / "log.txt").read_text())
    assert [m["iteration"] for m in metrics(run / "emc")] == list(range(1, 13))
    serial_config = lambda folder: emc_config(folder, iterations=12)      # noqa: E731
    if mode == "htc":
        assert lost and max(map(int, lost)) >= 3, lost                     # lost twice, the third try ran
        assert_the_serial_model(run / "emc", serial_config, tmp_path)
        return
    assert lost, "the EMC job was not lost with its block"
    serial = spibatch("emc", serial_config(tmp_path / "serial"), "--out", tmp_path / "serial" / "run", cwd=tmp_path)
    assert serial.returncode == 0, serial.stderr[-2000:]
    a, b = final_model(run / "emc"), final_model(tmp_path / "serial" / "run" / "emc")
    assert np.max(np.abs(a - b)) <= 1e-10 * np.max(np.abs(b))      # two ranks' sums vs one process's
