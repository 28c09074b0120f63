"""Site files: validation with one-line errors, the container prefix, the dry-run snapshots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spibatch.backends import Container, load_site
from spibatch.backends.containers import prefix
from spibatch.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SNAPSHOTS = Path(__file__).parent / "snapshots"


def site_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def test_default_site_is_local_hpc():
    site = load_site(None)
    assert (site.provider, site.emc_mode, site.workers, site.container.runtime) == ("local", "hpc", 2, "none")


def test_example_sites_load():
    local = load_site(REPO / "site_configs" / "local.yaml")
    slurm = load_site(REPO / "site_configs" / "slurm-example.yaml")
    assert local.provider == "local" and slurm.provider == "slurm"
    assert slurm.emc_mode == "hpc" and slurm.slurm.partition == "compute" and slurm.options is slurm.slurm
    assert slurm.container.runtime == "apptainer" and slurm.slurm.walltime == "02:00:00"


def test_emc_mode_defaults_by_provider(tmp_path):
    assert load_site(site_file(tmp_path, "provider: slurm\n")).emc_mode == "hpc"
    assert load_site(site_file(tmp_path, "provider: local\n")).emc_mode == "hpc"
    assert load_site(site_file(tmp_path, "provider: slurm\nemc_mode: htc\n")).emc_mode == "htc"


def test_walltime_forms(tmp_path):
    assert load_site(site_file(tmp_path, "provider: slurm\nslurm: {walltime: '1-02:03:04'}\n")).slurm.walltime == "26:03:04"
    assert load_site(site_file(tmp_path, "provider: slurm\nslurm: {walltime: '0:30:00'}\n")).slurm.walltime == "00:30:00"


@pytest.mark.parametrize("text, where, words", [
    ("provider: local\nworkerz: 3\n", "line 2: workerz", "unknown key (expected one of: name, provider, workers"),
    ("provider: slurm\nslurm:\n  partition: x\n  walltim: '01:00:00'\n", "line 4: slurm.walltim", "unknown key"),
    ("provider: slurm\nslurm:\n  walltime: 90 minutes\n", "line 3: slurm.walltime", "a walltime HH:MM:SS"),
    ("provider: slurm\nslurm: {walltime: '00:00:30'}\n", "line 2: slurm.walltime", "at least one minute"),
    ("provider: slurm\ncontainer: {runtime: apptainer}\n", "line 2: container", "runtime apptainer needs an image"),
    ("provider: local\nslurm: {partition: x}\n", "line 2: slurm", "a 'slurm' section, but provider is local"),
    ("provider: pbs\n", "line 1: provider", "expected one of local, slurm, kubernetes"),
    ("provider: local\nworkers: 0\n", "line 2: workers", "greater than or equal to 1"),
])
def test_bad_site_is_one_line(tmp_path, text, where, words):
    path = site_file(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_site(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {where}") and words in message and "\n" not in message


def test_missing_local_image_is_refused_before_anything(tmp_path):
    from spibatch.backends import provider_for

    site = load_site(site_file(tmp_path, "provider: local\ncontainer: {runtime: charliecloud, image: /nowhere/img}\n"))
    preflight = provider_for(site).preflight
    if os.system("command -v ch-run >/dev/null") != 0:
        with pytest.raises(InputError, match="ch-run is not on PATH"):
            preflight(tmp_path / "run")
    else:
        with pytest.raises(InputError, match="image /nowhere/img not found"):
            preflight(tmp_path / "run")


@pytest.mark.parametrize("container, expected", [
    (Container(), []),
    (Container(runtime="apptainer", image="/img/spibatch.sif", binds=["/data", "/scratch:/mnt"], gpu=True),
     ["apptainer", "exec", "--nv", "--bind", "/data:/data", "--bind", "/scratch:/mnt", "--bind", "/runs/r:/runs/r",
      "/img/spibatch.sif"]),
    (Container(runtime="apptainer", image="docker://ghcr.io/x/spibatch:1", options=["--cleanenv"]),
     ["apptainer", "exec", "--bind", "/runs/r:/runs/r", "--cleanenv", "docker://ghcr.io/x/spibatch:1"]),
    (Container(runtime="docker", image="spibatch:1", binds=["/data"], gpu=True),
     ["docker", "run", "--rm", "--network=host", "--ipc=host", "--gpus", "all", "-v", "/data:/data",
      "-v", "/runs/r:/runs/r", "-w", "/runs/r", "spibatch:1"]),
    (Container(runtime="charliecloud", image="/img/spibatch", binds=["/data"]),
     ["ch-run", "-b", "/data:/data", "-b", "/runs/r:/runs/r", "/img/spibatch", "--"]),
])
def test_container_prefix_forms(container, expected):
    assert prefix(container, ["/runs/r"], workdir="/runs/r") == expected


def test_run_directory_is_bound_once():
    container = Container(runtime="apptainer", image="i.sif", binds=["/runs/r"])
    assert prefix(container, ["/runs/r"]).count("--bind") == 1


@pytest.mark.parametrize("name", ["sbatch-tasks.sh", "sbatch-mpi.sh", "emc-hpc.sh"])
def test_slurm_dry_run_snapshot(name):
    """The example site's batch scripts, exactly as Parsl's SlurmProvider writes them
    (regenerate with SPIBATCH_UPDATE_SNAPSHOTS=1 after a deliberate change)."""
    pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")
    from spibatch.backends import provider_for

    site = load_site(REPO / "site_configs" / "slurm-example.yaml")
    files = provider_for(site).render(Path("/runs/example"),
                                      ["spibatch", "run", "pipeline.yaml", "--site", "slurm-example.yaml"]).files
    snapshot = SNAPSHOTS / f"slurm-example.{name}"
    if os.environ.get("SPIBATCH_UPDATE_SNAPSHOTS"):
        snapshot.write_text(files[name])
    assert files[name] == snapshot.read_text()
    assert not Path("/runs/example").exists()   # rendering writes nothing in the run directory


def test_slurm_dry_run_content():
    pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")
    from spibatch.backends import provider_for

    site = load_site(REPO / "site_configs" / "slurm-example.yaml")
    files = provider_for(site).render(Path("/runs/example"), ["spibatch", "run"]).files
    tasks = files["sbatch-tasks.sh"]
    assert "#SBATCH --partition=compute" in tasks and "#SBATCH --time=120" in tasks
    assert "#SBATCH --cpus-per-task=8" in tasks and "module load apptainer" in tasks
    assert ("apptainer exec --bind /shared/data:/shared/data --bind /runs/example:/runs/example "
            "/shared/images/spibatch.sif process_worker_pool.py") in tasks
    assert "srun --ntasks 1" in tasks and "--max_workers_per_node=8" in tasks
    assert "--enable_mpi_mode" in files["sbatch-mpi.sh"] and "--mpi-launcher=srun" in files["sbatch-mpi.sh"]
    assert "$PARSL_MPI_PREFIX apptainer exec" in files["emc-hpc.sh"] and "--mpi=pmix --overlap" in files["emc-hpc.sh"]


def test_gpus_give_one_gpu_per_worker(tmp_path):
    """With GPUs on a node or pod, Parsl pins each worker to one (available_accelerators -> its
    CUDA_VISIBLE_DEVICES), so a `device: gpu` task uses the GPU it was given; none without."""
    pytest.importorskip("parsl", reason="parsl is part of spibatch's dependencies; missing here")
    from spibatch.backends import provider_for

    gpu = load_site(site_file(tmp_path, "provider: slurm\nworkers: 8\nslurm: {gpus_per_node: 4}\n"))
    tasks = provider_for(gpu).executors(tmp_path)[0]
    assert tasks.available_accelerators == ["0", "1", "2", "3"] and tasks.max_workers_per_node == 4
    cpu = load_site(site_file(tmp_path, "provider: slurm\nworkers: 8\n"))
    tasks = provider_for(cpu).executors(tmp_path)[0]
    assert tasks.available_accelerators == [] and tasks.max_workers_per_node == 8
