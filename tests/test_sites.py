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
     ["docker", "run", "--rm", "--network=host", "--ipc=host", "--gpus", "all", "-e", "SPIBATCH_RUN_OWNER",
      "-v", "/data:/data",
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
            "/shared/images/spibatch.sif python3 -m spibatch.parsl_lean process_worker_pool.py") in tasks
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


# ---------------------------------------------------------------- the provider classes and launchers

EXAMPLES = {"local": REPO / "site_configs" / "local.yaml", "slurm": REPO / "site_configs" / "slurm-example.yaml",
            "kubernetes": REPO / "site_configs" / "kubernetes-example.yaml"}


def test_each_provider_is_a_class_on_the_one_base():
    from spibatch.backends import Provider, provider_class, provider_for

    for name, path in EXAMPLES.items():
        site = load_site(path)
        provider = provider_for(site)
        assert isinstance(provider, Provider) and type(provider) is provider_class(name)
        assert provider.name == name and provider.site is site and provider.options is site.options
        assert isinstance(site.options, provider.Options)
        assert provider.supports_hpc == (name != "kubernetes")
    assert {n: provider_class(n).default_emc_mode for n in EXAMPLES} == {"local": "hpc", "slurm": "hpc",
                                                                         "kubernetes": "htc"}


def test_base_defaults_declare_htc_only_and_one_core(tmp_path):
    from spibatch.backends import Provider, Rendered

    site = load_site(site_file(tmp_path, "provider: local\nworkers: 3\n"))
    provider = Provider(site)
    assert provider.supports_hpc is False and provider.node_cores() == 1 and provider.ranks_per_node() == 3
    assert provider.threads_per_worker() == 1 and provider.check_rendered(Rendered({})) == []
    assert provider.cluster_checks(tmp_path) == [] and provider.check_site(tmp_path) is None
    with pytest.raises(InputError) as err:
        provider.emc_launch(tmp_path, ["spibatch", "emc"], 2)
    line = str(err.value)
    assert line.startswith(f"{tmp_path / 'site.yaml'}: emc_mode: ") and "HTC mode only" in line


def test_kubernetes_has_no_mpi_launch():
    from spibatch.backends import provider_for

    with pytest.raises(InputError, match="runs EMC in HTC mode only"):
        provider_for(load_site(EXAMPLES["kubernetes"])).emc_launch(Path("/shared/r"), ["spibatch"], 2)


def test_rendered_prints_files_then_checks():
    from spibatch.backends import Rendered

    assert Rendered({"a.sh": "x\n"}).text() == "==> a.sh <==\nx\n\n"
    shown = Rendered({"a.sh": "x\n", "b.yaml": "y\n"}, ["one", "two"]).text()
    assert shown == "==> a.sh <==\nx\n\n==> b.yaml <==\ny\n\n==> checks.txt <==\none\ntwo\n\n"


def test_launchers_compose_mpi_around_the_container():
    from spibatch.backends import launchers

    box = launchers.container(Container(runtime="apptainer", image="/i.sif", binds=["/d"]), ["/runs/r"])
    command = ["python3", "-m", "spibatch", "emc", "/runs/r/a b.yaml"]
    inner = box(launchers.words(command))
    assert inner == "apptainer exec --bind /d:/d --bind /runs/r:/runs/r /i.sif python3 -m spibatch emc '/runs/r/a b.yaml'"
    assert launchers.mpirun(4, 2)(inner) == "mpirun -n 4 --bind-to none -x NUMBA_NUM_THREADS=2 " + inner
    assert launchers.PARSL_MPI(inner) == "$PARSL_MPI_PREFIX " + inner
    assert launchers.container(Container(), ["/runs/r"])(launchers.words(command)) == launchers.words(command)


@pytest.mark.parametrize("text, command", [
    ("provider: local\nworkers: 4\nlocal: {mpi: mpirun, cores: 8}\ncontainer: {runtime: docker, image: 'sp:1'}\n",
     "mpirun -n 4 --bind-to none -x NUMBA_NUM_THREADS=2 python3 -m spibatch.stages emc /runs/r"),  # in the worker's
    ("provider: local\nworkers: 4\nlocal: {mpi: 'off'}\n",
     "{python} -m spibatch.stages emc /runs/r"),
    ("provider: slurm\nworkers: 4\nslurm: {nodes: 2}\ncontainer: {runtime: charliecloud, image: /img}\n",
     "$PARSL_MPI_PREFIX ch-run -b /runs/r:/runs/r /img -- python3 -m spibatch.stages emc /runs/r"),
])
def test_emc_launch_lines(tmp_path, text, command):
    import sys

    from spibatch.backends import provider_for
    from spibatch.backends.parsl_common import emc_command

    site = load_site(site_file(tmp_path, text))
    provider = provider_for(site)
    launch = provider.emc_launch(Path("/runs/r"), emc_command(site, Path("/runs/r")), 4)
    assert launch.command == command.format(python=sys.executable)
    if site.provider == "slurm":
        assert launch.executor == "mpi" and launch.nodes == 2
        assert launch.resources == {"num_nodes": 2, "num_ranks": 4, "ranks_per_node": 2,
                                    "launcher_options": "--mpi=pmix --overlap"}
    else:
        assert launch.executor == "tasks" and launch.resources == {} and launch.nodes == 1


def test_importing_and_choosing_a_provider_stays_light():
    import subprocess
    import sys

    code = ("import sys; from spibatch.backends import load_site, provider_for\n"
            f"for p in {[str(p) for p in EXAMPLES.values()]!r}: provider_for(load_site(p)).preflight\n"
            "print(sorted(m for m in ('parsl', 'kubernetes', 'zmq') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


# ---------------------------------------------------------------- encryption

def test_workers_on_other_hosts_are_encrypted(tmp_path):
    """Parsl's CurveZMQ on every executor whose workers connect over the network (Slurm: both executors;
    Parsl's MPIExecutor defaults to encrypted=False), and on the local site's too (see parsl_common)."""
    pytest.importorskip("parsl", reason="parsl is part of spibatch's dependencies; missing here")
    import zmq

    from spibatch.backends import provider_for

    assert zmq.has("curve")       # what encrypted=True needs: pyzmq with CURVE, no other package
    slurm = provider_for(load_site(site_file(tmp_path, "provider: slurm\nworkers: 2\n")))
    executors = slurm.executors(tmp_path)
    assert [e.label for e in executors] == ["tasks", "mpi"] and all(e.encrypted for e in executors)
    assert provider_for(load_site(None)).parsl_config(tmp_path).executors[0].encrypted


def test_dry_run_shows_where_the_keys_are():
    pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")
    from spibatch.backends import provider_for

    files = provider_for(load_site(EXAMPLES["slurm"])).render(Path("/runs/example"), ["spibatch", "run"]).files
    assert "--cert_dir /runs/example/runinfo/<NNN>/tasks/certificates " in files["sbatch-tasks.sh"]
    assert "--cert_dir /runs/example/runinfo/<NNN>/mpi/certificates " in files["sbatch-mpi.sh"]
    local = provider_for(load_site(None)).render(Path("/runs/example"), ["spibatch", "run"]).files
    assert "--cert_dir /runs/example/runinfo/<NNN>/tasks/certificates " in local["workers.sh"]


# ---------------------------------------------------------------- Slurm checks: the site file and key, or skipped

def fake_slurm(folder: Path, *, sinfo: str = "echo 'debug*'", sbatch: str = "echo 'sbatch: Job 1 to start at now'"
               ) -> Path:
    """A bin/ folder with stand-ins for sbatch, sinfo and srun (shell bodies)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in (("sinfo", sinfo), ("sbatch", sbatch), ("srun", "exit 0")):
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


SLURM_SITE = "provider: slurm\nworkers: 2\nslurm: {partition: debug}\n"


@pytest.mark.parametrize("text, sinfo, sbatch, keep, field, words", [
    (SLURM_SITE, "echo 'slurm_load_partitions: Unable to contact slurm controller' >&2; exit 1", None, None,
     "provider", "sinfo failed: slurm_load_partitions: Unable to contact slurm controller"),
    (SLURM_SITE, None, None, ("sinfo", "srun"), "provider", "sbatch is not on PATH"),
    (SLURM_SITE.replace("debug", "gpu"), None, None, None, "slurm.partition", "partition 'gpu' does not exist"),
    (SLURM_SITE + "container: {runtime: apptainer, image: /nowhere.sif}\n", None, None, None, "container.runtime",
     "apptainer is not on PATH"),
])
def test_every_slurm_check_names_the_site_file_and_key(tmp_path, monkeypatch, text, sinfo, sbatch, keep, field,
                                                       words):
    from spibatch.backends import provider_for

    bin_dir = fake_slurm(tmp_path / "bin", **{k: v for k, v in (("sinfo", sinfo), ("sbatch", sbatch)) if v})
    for name in ("sbatch", "sinfo", "srun"):
        if keep is not None and name not in keep:
            (bin_dir / name).unlink()
    monkeypatch.setenv("PATH", str(bin_dir))
    path = site_file(tmp_path, text)
    with pytest.raises(InputError) as err:
        provider_for(load_site(path)).preflight(tmp_path / "run")
    line = str(err.value)
    assert line.startswith(f"{path}: {field}: ") and words in line and "\n" not in line, line


def test_sbatch_refusal_names_the_site_file(tmp_path, monkeypatch):
    pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")
    from spibatch.backends import provider_for

    monkeypatch.setenv("PATH", str(fake_slurm(tmp_path / "bin", sbatch="echo 'sbatch: error: invalid QOS' >&2; exit 1")))
    path = site_file(tmp_path, SLURM_SITE)
    with pytest.raises(InputError) as err:
        provider_for(load_site(path)).dry_run(tmp_path / "run", ["spibatch", "run"])
    assert str(err.value).startswith(f"{path}: slurm: sbatch --test-only refuses sbatch-tasks.sh: sbatch: error: "
                                     "invalid QOS")


@pytest.mark.parametrize("keep, reason", [
    ((), "sbatch is not on PATH (run on a Slurm login node (or load the Slurm module))"),
    (("sbatch", "sinfo", "srun"), "sinfo failed: Unable to contact slurm controller (run on a Slurm login node "
                                  "whose slurmctld answers)"),
])
def test_slurm_dry_run_away_from_the_cluster_prints_the_scripts_and_skips(tmp_path, monkeypatch, keep, reason):
    """Away from Slurm (no sbatch, or a slurmctld that does not answer) the dry run still prints every
    script, then one `skipped:` line for each question only Slurm can answer."""
    pytest.importorskip("parsl", reason="Parsl not installed (pip install '.[platform]')")
    from spibatch.backends import provider_for

    bin_dir = fake_slurm(tmp_path / "bin", sinfo="echo 'Unable to contact slurm controller' >&2; exit 1")
    for name in ("sbatch", "sinfo", "srun"):
        if name not in keep:
            (bin_dir / name).unlink()
    monkeypatch.setenv("PATH", str(bin_dir))
    site = load_site(REPO / "site_configs" / "slurm-example.yaml")
    provider = provider_for(site)
    rendered = provider.dry_run(Path("/runs/example"), ["spibatch", "run"])
    assert rendered.files == provider.render(Path("/runs/example"), ["spibatch", "run"]).files
    questions = ([] if keep else ["sbatch, sinfo and srun on PATH"]) + [
        "partition compute exists (sinfo)", "apptainer and the image present", "sbatch --test-only of each batch script"]
    assert rendered.checks == [f"skipped: {q}: {reason}" for q in questions]
    assert list(rendered.listing())[-1] == "checks.txt"


# ---------------------------------------------------------------- Kubernetes without the [k8s] extra

def test_kubernetes_dry_run_without_the_client_prints_the_manifests_then_skips(tmp_path):
    """No `kubernetes` package: `spibatch run --dry-run` prints the worker pod and driver Job (they need no
    client), then one `skipped:` line for each question only the API server can answer; exit 0."""
    import subprocess
    import shutil
    import sys

    import yaml

    blocker = tmp_path / "no-k8s"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['kubernetes'] = None   # as if not installed\n")
    shutil.copy(REPO / "spibatch" / "data" / "1EI7.pdb", tmp_path / "1EI7.pdb")
    (tmp_path / "tiny.yaml").write_text("name: tiny\nsimulation: {pdb: 1EI7.pdb, num_patterns: 100}\n")
    out = "/shared/runs/tiny"
    done = subprocess.run([sys.executable, "-m", "spibatch", "run", "tiny.yaml", "--site", str(EXAMPLES["kubernetes"]),
                           "--dry-run", "--out", out], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{REPO}"})
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and not Path(out).exists()
    sections = done.stdout.split("==> ")
    assert [s.split(" <==")[0] for s in sections[1:]] == ["worker-pod.yaml", "driver-job.yaml", "checks.txt"]
    pod = yaml.safe_load(sections[1].split("<==\n", 1)[1])
    assert pod["kind"] == "Pod" and pod["spec"]["containers"][0]["workingDir"] == out
    reason = "the kubernetes client is not installed (pip install 'spibatch[k8s]')"
    checks = sections[3].split("<==\n", 1)[1].split("\n\ndry run:")[0].splitlines()
    assert checks == [f"skipped: namespace spibatch exists: {reason}",
                      f"skipped: PersistentVolumeClaim spibatch-shared exists in namespace spibatch: {reason}",
                      f"skipped: the API server admits worker-pod.yaml (dryRun=All): {reason}"]
    assert done.stdout.rstrip().endswith(f"dry run: nothing submitted; the run would go to {out}")


def test_cli_names_the_site_file_when_sinfo_fails(tmp_path):
    """`spibatch run` on a login node whose slurmctld does not answer: one line naming the site file."""
    import shutil
    import subprocess
    import sys

    bin_dir = fake_slurm(tmp_path / "bin", sinfo="echo 'Unable to contact slurm controller' >&2; exit 1")
    shutil.copy(REPO / "spibatch" / "data" / "1EI7.pdb", tmp_path / "1EI7.pdb")
    (tmp_path / "tiny.yaml").write_text("name: tiny\nsimulation: {pdb: 1EI7.pdb, num_patterns: 100}\n")
    site = site_file(tmp_path, SLURM_SITE)
    done = subprocess.run([sys.executable, "-m", "spibatch", "run", "tiny.yaml", "--site", str(site), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode == 2 and not (tmp_path / "run").exists()
    assert done.stderr.strip() == (f"spibatch: error: {site}: provider: sinfo failed: Unable to contact slurm "
                                   "controller; run on a Slurm login node whose slurmctld answers")


def test_a_charliecloud_bind_without_a_mount_point_in_the_image_is_one_line(tmp_path, monkeypatch):
    """ch-run mounts only onto paths a read-only image has ('can't mkdir ... Read-only file system' in the
    worker's log, and a failed block, otherwise): refused before anything, naming the bind and the mkdir."""
    from spibatch.backends import containers

    monkeypatch.setattr(containers.shutil, "which", lambda program: f"/usr/bin/{program}")
    image = tmp_path / "img"
    (image / "data").mkdir(parents=True)
    ok = Container(runtime="charliecloud", image=str(image), binds=["/data", "/somewhere/x:/data"])
    containers.check(ok, tmp_path / "site.yaml", ["/tmp/run-1"])       # /tmp: the host's, bound by ch-run
    bad = Container(runtime="charliecloud", image=str(image), binds=["/data", "/work/shared/sets"])
    with pytest.raises(InputError) as info:
        containers.check(bad, tmp_path / "site.yaml", ["/tmp/run-1"])
    message = str(info.value)
    assert "container.binds" in message and "/work/shared/sets has no mount point" in message
    assert f"mkdir -p {image}/work/shared/sets" in message and "\n" not in message
    private = Container(runtime="charliecloud", image=str(image), options=["--private-tmp"])
    with pytest.raises(InputError, match="/tmp/run-1 has no mount point"):
        containers.check(private, tmp_path / "site.yaml", ["/tmp/run-1"])
    containers.check(Container(runtime="charliecloud", image=str(image), binds=["/work/x"], options=["-w"]))


def test_hpc_mode_as_root_under_open_mpi_without_its_permission_is_one_line(tmp_path, monkeypatch):
    """As root, Open MPI's mpirun refuses to start unless both OMPI_ALLOW_RUN_AS_ROOT variables are set: the
    local site's HPC mode said so only as 'the emc job failed (BashExitFailure)' after the run folder existed.
    Now `local.mpi: auto` runs one process there, and `local.mpi: mpirun` is refused in one line."""
    import shutil
    import subprocess

    from spibatch.backends import local, provider_for

    if shutil.which("mpirun") is None or "Open MPI" not in subprocess.run(["mpirun", "--version"],
                                                                         capture_output=True, text=True).stdout:
        pytest.skip("needs Open MPI's mpirun (the check is about its refusal to run as root)")
    site = load_site(site_file(tmp_path, "provider: local\nworkers: 2\nlocal: {cores: 2, mpi: mpirun}\n"))
    monkeypatch.setattr(local.os, "geteuid", lambda: 0)
    monkeypatch.setattr(local, "_has_mpi", lambda: True)
    for name in ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InputError, match="local.mpi: local.mpi is mpirun, but this is root"):
        provider_for(site).check_site(tmp_path / "run")
    auto = load_site(site_file(tmp_path, "provider: local\nworkers: 2\nlocal: {cores: 2, mpi: auto}\n"))
    assert not provider_for(auto).uses_mpi()              # auto: one process, which does start
    provider_for(auto).check_site(tmp_path / "run")
    exported = load_site(site_file(tmp_path, "provider: local\nworkers: 2\nlocal: {cores: 2, mpi: mpirun, worker_init: "
                                   "'export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1'}\n"))
    provider_for(exported).check_site(tmp_path / "run")  # the workers' own environment allows it: no line
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    provider_for(site).check_site(tmp_path / "run")      # allowed: no line
    assert not local._root_refused() and provider_for(auto).uses_mpi()
    monkeypatch.setattr(local.os, "geteuid", lambda: 1000)
    assert not local._root_refused({})


@pytest.mark.parametrize("value", ["08", "0189", "1:30", "0x1_0", "0o17"])
def test_a_site_round_trips_names_that_look_like_numbers(tmp_path, value):
    """A run's site.yaml is dumped and read back by its workers and resumes: `partition: "08"` came back as 8."""
    from spibatch.backends import dump_site

    path = tmp_path / "site.yaml"
    path.write_text(f"name: s\nprovider: slurm\nworkers: 1\nslurm: {{partition: '{value}', account: '{value}'}}\n")
    site = load_site(path)
    assert site.slurm.partition == value
    path.write_text(dump_site(site))
    assert load_site(path).slurm.partition == value and load_site(path).slurm.account == value
