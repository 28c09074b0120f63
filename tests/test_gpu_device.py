"""``device: gpu`` in the pipeline file: the keys, the one GPU per rank / worker, the one-line error without one."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from spibatch.config import load_pipeline
from spibatch.errors import InputError
from spibatch.kernels.xp import array_module, device_for_rank, local_rank, module_of, require_gpu, visible_devices


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
    assert array_module("cpu") is np and module_of(np.zeros(2)) is np
    with pytest.raises(ValueError, match="unknown device"):
        array_module("tpu")


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
