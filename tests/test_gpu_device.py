"""``device: gpu`` in the pipeline file: the keys, the one GPU per rank / worker, the one-line error without one."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from spibatch.config import load_pipeline
from spibatch.errors import InputError
from spibatch.kernels.device import CPU, Device, declared, resolve
from spibatch.kernels.xp import device_for_rank, local_rank, module_of, require_gpu, visible_devices


def test_device_keys_default_to_the_cpu_and_refuse_other_values(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("name: t\n")
    pipeline = load_pipeline(path)
    assert (pipeline.device, pipeline.gpu_runtime) == ("cpu", "cupy")
    path.write_text("name: t\ndevice: gpu\ngpu_runtime: pycuda\n")
    assert (load_pipeline(path).device, load_pipeline(path).gpu_runtime) == ("gpu", "pycuda")
    path.write_text("name: t\ndevice: tpu\n")
    with pytest.raises(InputError) as info:
        load_pipeline(path)
    assert "line 2: device" in str(info.value) and "'cpu' or 'gpu'" in str(info.value)


@pytest.mark.parametrize("env, expected", [
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "3"}, 3),          # OpenMPI's mpirun
    ({"SLURM_LOCALID": "2"}, 2),                       # srun
    ({"MPI_LOCALRANKID": "1"}, 1),                     # MPICH / Intel MPI
    ({}, 0),                                           # serial, or a Parsl worker
])
def test_local_rank_from_the_launcher(env, expected):
    assert local_rank(env) == expected


def test_each_rank_takes_one_visible_device():
    # 4 ranks on a node with 4 GPUs all visible: one each
    assert [device_for_rank(r, None, 4) for r in range(4)] == [0, 1, 2, 3]
    # 8 ranks on 4 GPUs: two per GPU, round robin
    assert [device_for_rank(r, None, 4) for r in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    # a Parsl worker with available_accelerators (or srun --gpus-per-task=1) sees one: device 0 whatever its rank
    assert device_for_rank(5, visible_devices({"CUDA_VISIBLE_DEVICES": "2"})) == 0
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "0, 3"}) == ["0", "3"] and visible_devices({}) is None
    with pytest.raises(RuntimeError, match="no CUDA device"):
        device_for_rank(0, visible_devices({"CUDA_VISIBLE_DEVICES": ""}))


def test_the_array_module_follows_the_device_and_the_inputs():
    import pickle

    assert CPU.xp is np and module_of(np.zeros(2)) is np and resolve("cpu") is CPU
    with pytest.raises(ValueError, match="unknown device kind"):
        Device("tpu")
    with pytest.raises(ValueError, match="does not run on gpu"):
        Device("gpu", "numpy")
    twin = resolve("gpu", "cupy", env={"SPIBATCH_GPU_TWIN": "1"})      # the test aid, registered by name
    assert twin == Device("gpu", "twin") and twin.xp is np and twin.activate() is None
    assert twin.launch_runtime is Device("gpu", "twin").launch_runtime   # one instance per process
    assert pickle.loads(pickle.dumps(twin)) == twin                      # it travels to tasks and ranks
    assert declared("gpu", "pycuda", env={}) == Device("gpu", "pycuda")  # unchecked: for a driver without a GPU


def _has_gpu() -> bool:
    try:
        require_gpu("cupy")
    except InputError:
        return False
    return True


def test_device_gpu_without_a_gpu_stops_in_one_line_before_a_run_directory(tmp_path):
    if _has_gpu():
        pytest.skip("a GPU is present here: the missing-GPU error cannot happen")
    (tmp_path / "pipeline.yaml").write_text("name: t\ndevice: gpu\nphasing:\n  intensity: none.h5\n")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "spibatch", "phase", "pipeline.yaml", "--out", "run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "device" in lines[0] and ("cupy" in lines[0].lower() or "GPU" in lines[0])
    assert "pipeline.yaml" in lines[0] and "device: cpu" in lines[0]     # which file, and what to do
    assert not (tmp_path / "run").exists()
    assert time.perf_counter() - start < 60


@pytest.mark.mpi
def test_mpi_ranks_on_the_gpu_path_give_the_cpu_model(emc_config, tmp_path):
    """`mpirun -n 2 spibatch emc` with device: gpu (each rank's GPU step on the kernels' numpy twins, or on the
    GPU where one is present) against the 1-rank CPU run: the sums come back to the host, MPI is unchanged."""
    import json
    import os
    import shutil

    import h5py

    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun not found (apt-get install openmpi-bin libopenmpi-dev; .ci/run does)")
    pytest.importorskip("mpi4py", reason="mpi4py not installed (pip install '.[test]')")
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    if not _has_gpu():
        env["SPIBATCH_GPU_TWIN"] = "1"
    cpu_config = emc_config(tmp_path / "cpu", iterations=2, frames_per_shard=60)
    gpu_config = emc_config(tmp_path / "gpu", iterations=2, frames_per_shard=60)
    gpu_config.write_text(gpu_config.read_text() + "device: gpu\n")
    command = [sys.executable, "-m", "spibatch", "emc"]
    two = subprocess.run([mpirun, "-n", "2", "--oversubscribe", *command, str(gpu_config), "--out",
                          str(tmp_path / "two")], capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert two.returncode == 0, two.stdout + two.stderr
    one = subprocess.run([*command, str(cpu_config), "--out", str(tmp_path / "one")], capture_output=True,
                         text=True, cwd=tmp_path, timeout=600, env=env)
    assert one.returncode == 0, one.stderr
    metrics = [json.loads(line) for line in (tmp_path / "two" / "emc" / "metrics.jsonl").read_text().splitlines()]
    assert [m["mpi_ranks"] for m in metrics] == [2, 2] and "transfer_s" in metrics[-1]["timing"]   # the GPU step ran
    with h5py.File(tmp_path / "one" / "emc" / "checkpoint.h5") as a, h5py.File(tmp_path / "two" / "emc" / "checkpoint.h5") as b:
        cpu, gpu = a["model"][()], b["model"][()]
        assert np.abs(gpu - cpu).max() <= 1e-3 * np.abs(cpu).max()


def test_a_worker_without_cupy_says_so_in_one_line(monkeypatch):
    """The GPU audit: a task handed `device: gpu` by a driver that could not check its workers (`declared`) met a
    worker without CuPy with a ModuleNotFoundError traceback from `Device.activate`; now the one-line InputError
    that names what to install, as on the driver."""
    import builtins

    real_import = builtins.__import__

    def no_cupy(name, *args, **kwargs):
        if name == "cupy" or name.startswith("cupy."):
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cupy)
    monkeypatch.setattr("spibatch.kernels.xp._current", [])
    with pytest.raises(InputError, match="CuPy is not installed.*device: cpu"):
        declared("gpu", "cupy", env={}).activate()
