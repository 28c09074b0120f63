"""The Kubernetes site end to end against an emulated API server (kmock) and a local pod runner.

Parsl's real KubernetesProvider (our subclass only builds the pod) and the real ``kubernetes``
client create, poll and delete pods on kmock; tests/k8s_emulator.py's PodRunner runs each pod's
command as a local process, each in a network namespace of its own on a pod network (where this machine
allows it: root), which reaches the driver only at the site's ``interchange_address``.  See README
"Running on a cluster" for what this does not test.
"""

import os
import warnings
from pathlib import Path

import pytest
import yaml

from k8s_emulator import HOST_ADDRESS, Cluster, PodNetwork, PodRunner, host_env

pytest.importorskip("kmock", reason="kmock (the Kubernetes API emulator) is in the [test] extra")
pytest.importorskip("parsl", reason="parsl is in the [platform] extra")

pytestmark = pytest.mark.emulated
REPO = Path(__file__).resolve().parents[1]


def write_site(tmp_path: Path, shared: Path, **kubernetes) -> Path:
    options = {"namespace": "spibatch", "pvc": "shared", "mount_path": str(shared),
               "interchange_address": "127.0.0.1", "strategy_period_s": 0.5, "max_idletime_s": 2,
               "cpu_request": "500m", "cpu_limit": "1", "memory_request": "256Mi", "memory_limit": "1Gi",
               "worker_init": f"export PYTHONPATH={REPO}:{REPO / 'tests'}"}
    options.update(kubernetes)
    site = {"name": "emulated", "provider": "kubernetes", "workers": 2,
            "container": {"runtime": "docker", "image": "spibatch:test"}, "kubernetes": options}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def pod_network():
    """Each pod a host of its own on a pod network where this machine allows it (root and iproute2, as in CI),
    else (said as a warning) the pods share this machine's network."""
    why = PodNetwork.available()
    if why:
        warnings.warn(f"emulated pods share this machine's network: {why}", stacklevel=1)
        yield None
        return
    with PodNetwork() as network:
        yield network


def driver_address(network: PodNetwork | None) -> str:
    """Where the pods reach the driver's interchange: this machine on the pod network (127.0.0.1 without one)."""
    return HOST_ADDRESS if network else "127.0.0.1"


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    with Cluster({"spibatch": ["shared"]}) as emulated:
        kubeconfig = str(emulated.write_kubeconfig(tmp_path / "kubeconfig"))
        monkeypatch.setenv("KUBECONFIG", kubeconfig)
        # the client reads $KUBECONFIG once, at import: point its default there too (Parsl's provider uses it)
        monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
        yield emulated


def test_preflight_asks_the_api_server(cluster, tmp_path):
    from spibatch.backends import load_site, provider_for
    from spibatch.errors import InputError

    shared = tmp_path / "shared"
    run_dir = shared / "runs" / "r1"
    provider_for(load_site(write_site(tmp_path, shared))).preflight(run_dir)   # namespace and claim exist: quiet
    with pytest.raises(InputError) as missing_ns:
        provider_for(load_site(write_site(tmp_path, shared, namespace="nowhere"))).preflight(run_dir)
    line = str(missing_ns.value)
    assert "\n" not in line and "kubernetes.namespace" in line and "namespace nowhere does not exist" in line
    assert "kubectl create namespace nowhere" in line and str(tmp_path / "site.yaml") in line
    with pytest.raises(InputError) as missing_pvc:
        provider_for(load_site(write_site(tmp_path, shared, pvc="elsewhere"))).preflight(run_dir)
    assert "kubernetes.pvc" in str(missing_pvc.value) and "elsewhere does not exist" in str(missing_pvc.value)


def test_dry_run_asks_the_api_server_to_admit_the_pod(cluster, tmp_path):
    from spibatch.backends import load_site, provider_for
    from spibatch.errors import InputError

    shared = tmp_path / "shared"
    provider = provider_for(load_site(write_site(tmp_path, shared)))
    rendered = provider.render(shared / "runs" / "r1", ["spibatch", "run"])
    assert "admitted by the API server" in provider.check_rendered(rendered)[0]
    assert cluster.kmock.dry_runs[-1] == yaml.safe_load(rendered.files["worker-pod.yaml"])
    cluster.kmock.refuse = 'pods "x" is forbidden: violates PodSecurity "restricted:latest": seccompProfile'
    with pytest.raises(InputError) as err:
        provider.check_rendered(rendered)
    line = str(err.value)
    assert "\n" not in line and "refuses the worker pod (403" in line and "violates PodSecurity" in line
    assert cluster.api().list_namespaced_pod("spibatch").items == []


def test_parsl_tasks_run_in_emulated_pods(cluster, pod_network, tmp_path):
    import parsl
    from parsl import python_app

    from k8s_tasks import where_am_i
    from spibatch.backends import load_site, provider_for

    shared = tmp_path / "shared"
    run_dir = shared / "runs" / "r1"
    run_dir.mkdir(parents=True)
    site = load_site(write_site(tmp_path, shared, interchange_address=driver_address(pod_network)))
    app = python_app(where_am_i, executors=["tasks"])
    with PodRunner(cluster, "spibatch", host_env(), network=pod_network) as runner:
        with parsl.load(provider_for(site).parsl_config(run_dir)):
            results = [app(str(run_dir), i).result(timeout=120) for i in range(4)]
        assert not runner.errors, runner.errors
        assert [r["square"] for r in results] == [0, 1, 4, 9]
        assert [(run_dir / f"task-{i}.txt").read_text() for i in range(4)] == ["0\n", "1\n", "4\n", "9\n"]
        assert {r["run_dir"] for r in results} == {str(run_dir)}       # the pod's env, not ours
        assert {r["home"] for r in results} == {"/tmp"}
        assert {r["cwd"] for r in results} == {str(run_dir)}
        assert os.getpid() not in {r["pid"] for r in results}
        if pod_network:                      # the tasks ran on the pods' own network stacks, not this machine's
            assert os.readlink("/proc/self/ns/net") not in {r["net"] for r in results}
            assert set(runner.addresses.values()) <= {f"{HOST_ADDRESS[:-2]}.{i}" for i in range(2, 255)}
        assert runner.started, "no pod was created"
        for _ in range(100):                                          # Parsl deletes its pods at cleanup
            if len(runner.deleted) == len(runner.started):
                break
            import time
            time.sleep(0.1)
        assert sorted(runner.deleted) == sorted(p["metadata"]["name"] for p in runner.started)
    assert cluster.api().list_namespaced_pod("spibatch").items == []

    # The dry run showed this very pod: equal but for the job id, the name and the ports in the command.
    created = runner.started[0]
    shown = yaml.safe_load(provider_for(site).render(run_dir, ["spibatch", "run"]).files["worker-pod.yaml"])
    job_id = created["metadata"]["labels"]["parsl-job-id"]
    assert created["metadata"]["name"] == f"emulated-worker.{job_id}" or created["metadata"]["name"].endswith(job_id)
    for pod in (created, shown):
        pod["metadata"].pop("name"), pod["metadata"]["labels"].pop("parsl-job-id")
        pod["spec"]["containers"][0].pop("args")
        for key in ("status", "creationTimestamp", "uid", "resourceVersion"):
            pod.pop(key, None), pod["metadata"].pop(key, None)
    assert created == shown


TINY_PIPELINE = """\
name: tiny
geometry: {detector_pixels: 24, pixel_size_m: 1.3e-3, detector_distance_m: 0.15, photon_energy_ev: 6000,
           beamstop_radius_pixels: 2}
simulation: {pdb: 1EI7.pdb, num_patterns: 100, mean_photons_per_frame: 500, seed: 1}
emc: {num_div: 2, iterations: 2, frames_per_shard: 50, seed: 1}
phasing: {recipe: "(HIO(beta=0.9) ** 10 * ShrinkWrap(sigma=2, threshold=0.1)) ** 2 * ER() ** 10",
          num_starts: 2, keep_best: 2, seed: 1}
"""


def spibatch_cli(*args, env, cwd):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "spibatch", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=900)


@pytest.mark.slow
def test_pipeline_runs_in_emulated_pods(cluster, pod_network, tmp_path):
    """`spibatch run --dry-run`, then `spibatch run` of a small pipeline with the Kubernetes site:
    every stage and every HTC EMC shard task runs in a worker pod."""
    import shutil

    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(REPO / "spibatch" / "data" / "1EI7.pdb", shared / "1EI7.pdb")
    (shared / "tiny.yaml").write_text(TINY_PIPELINE)
    site = write_site(tmp_path, shared, cpu_limit="1", max_idletime_s=30,
                      interchange_address=driver_address(pod_network))
    env = {**os.environ, "KUBECONFIG": os.environ["KUBECONFIG"]}
    out = shared / "runs" / "tiny"

    shown = spibatch_cli("run", "tiny.yaml", "--site", site, "--out", out, "--dry-run", env=env, cwd=shared)
    assert shown.returncode == 0, shown.stderr
    assert "kind: Pod" in shown.stdout and "kind: Job" in shown.stdout and not out.exists()
    assert "admitted by the API server (dry run" in shown.stdout                 # check_rendered: dryRun=All
    assert cluster.api().list_namespaced_pod("spibatch").items == []            # and nothing created
    assert len(cluster.kmock.dry_runs) == 1 and cluster.kmock.dry_runs[0]["kind"] == "Pod"
    pods = [o for o in yaml.safe_load_all(shown.stdout.split("==> worker-pod.yaml <==")[1].split("==>")[0]) if o]
    assert pods[0]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "shared"

    with PodRunner(cluster, "spibatch", host_env(), network=pod_network) as runner:
        done = spibatch_cli("run", "tiny.yaml", "--site", site, "--out", out, env=env, cwd=shared)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert not runner.errors, runner.errors
        assert runner.started and runner.most_at_once <= 2    # workers 2, one per pod: at most 2 pods at once
    for stage in ("simulate", "emc", "phase", "validate"):
        assert (out / "stages" / f"{stage}.json").is_file(), stage
    assert (out / "report.html").is_file()
    assert (out / "emc" / "output_002.h5").is_file()
    site_used = yaml.safe_load((out / "site.yaml").read_text())
    assert site_used["provider"] == "kubernetes" and site_used["emc_mode"] == "htc"
    # the tasks ran in the pods' processes: the workers' logs are on the shared filesystem
    assert list((out / "runinfo" / "workers").rglob("worker_*.log")) or list((out / "runinfo").rglob("manager.log"))


def test_cli_bad_namespace_is_one_line(cluster, tmp_path):
    import shutil

    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(REPO / "spibatch" / "data" / "1EI7.pdb", shared / "1EI7.pdb")
    (shared / "tiny.yaml").write_text(TINY_PIPELINE)
    site = write_site(tmp_path, shared, namespace="nowhere")
    done = spibatch_cli("run", "tiny.yaml", "--site", site, "--out", shared / "runs" / "x", "--dry-run",
                        env=dict(os.environ), cwd=shared)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "namespace nowhere does not exist" in lines[0] and str(site) in lines[0]
    assert not (shared / "runs").exists()


@pytest.mark.skipif(not os.environ.get("SPIBATCH_TEST_KUBECONFIG"),
                    reason="opt-in: set SPIBATCH_TEST_KUBECONFIG=<kubeconfig>, SPIBATCH_TEST_K8S_SITE=<site.yaml> "
                    "(its image pushed, its PVC bound, interchange_address reachable from the pods) and "
                    "SPIBATCH_TEST_K8S_SHARED=<this machine's path of that shared filesystem, inside mount_path>")
def test_real_cluster(tmp_path):
    """The same small pipeline with `spibatch run` on a real cluster."""
    import shutil

    shared = Path(os.environ["SPIBATCH_TEST_K8S_SHARED"]) / f"spibatch-test-{os.getpid()}"
    shared.mkdir(parents=True)
    shutil.copy(REPO / "spibatch" / "data" / "1EI7.pdb", shared / "1EI7.pdb")
    (shared / "tiny.yaml").write_text(TINY_PIPELINE)
    env = {**os.environ, "KUBECONFIG": os.environ["SPIBATCH_TEST_KUBECONFIG"]}
    out = shared / "runs" / "tiny"
    done = spibatch_cli("run", "tiny.yaml", "--site", os.environ["SPIBATCH_TEST_K8S_SITE"], "--out", out,
                        env=env, cwd=shared)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in ("simulate", "emc", "phase", "validate"):
        assert (out / "stages" / f"{stage}.json").is_file(), stage
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_a_live_source_followed_with_emc_tasks_in_emulated_pods(cluster, pod_network, tmp_path):
    """Near real time on the Kubernetes site (emulated: kmock and local pod processes): the follower beside the
    driver, EMC in HTC mode as shard tasks in the worker pods taking the chunks as they come, previews and the
    phasing as tasks too; a CXI folder on the shared volume is replayed into while it runs."""
    from platform_helpers import write_live_source
    from spibatch.stream import rehearsal

    shared = tmp_path / "shared"
    hits = 120
    frames, target, config = write_live_source(shared, hits)
    site = write_site(tmp_path, shared, cpu_limit="1", max_idletime_s=30,
                      interchange_address=driver_address(pod_network))
    env = {**os.environ, "KUBECONFIG": os.environ["KUBECONFIG"]}
    with PodRunner(cluster, "spibatch", host_env(), network=pod_network) as runner:
        done = rehearsal.follow_replay(frames, "cxi-folder", str(target), config, shared / "live", rate_hz=40.0,
                                       env=env, site=site, log_dir=shared, timeout_s=900)
        assert not runner.errors, runner.errors
        assert runner.started and runner.most_at_once <= 2
    run, summary = done.run, rehearsal.summarize(done)
    assert (summary["frames_seen"], summary["hits"]) == (frames.num_frames, hits)
    stages = {p.stem: yaml.safe_load(p.read_text()) for p in (run.path / "stages").glob("*.json")}
    assert {n: s["status"] for n, s in stages.items()} == {n: "done" for n in ("follow", "emc", "phase", "validate")}
    assert stages["emc"]["emc_mode"] == "htc"
    timing = (run.emc / "htc" / "timing.jsonl").read_text().splitlines()
    assert len(timing) == summary["emc_iterations"]                    # every iteration's shards ran as pod tasks
    records = rehearsal.previews(run)
    assert records[-1]["final"] and records[-1]["frames"] == hits
    assert summary["emc_cc_with_truth"] > 0.8


@pytest.mark.slow
def test_pods_that_cannot_reach_the_interchange_end_the_run_in_one_line(cluster, pod_network, tmp_path):
    """The commonest mistake on a real cluster: an interchange address the pods cannot reach (here 127.0.0.1,
    each pod's own loopback).  The pools give up after probing it, Parsl marks the executor bad, and the run ends
    with one line that names the address tried and the site key to set -- not Parsl's "Error 1:"."""
    if pod_network is None:
        pytest.skip("needs the pod network (root and iproute2; .ci/run has both): without it 127.0.0.1 reaches "
                    "the driver")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "tiny.yaml").write_text(TINY_PIPELINE)
    (shared / "1EI7.pdb").write_bytes((REPO / "spibatch" / "data" / "1EI7.pdb").read_bytes())
    site = write_site(tmp_path, shared, interchange_address="127.0.0.1")
    env = {**os.environ, "KUBECONFIG": os.environ["KUBECONFIG"]}
    with PodRunner(cluster, "spibatch", host_env(), network=pod_network) as runner:
        done = spibatch_cli("run", "tiny.yaml", "--site", site, "--out", shared / "runs" / "tiny", env=env, cwd=shared)
        assert runner.started
    assert done.returncode == 1, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("spibatch: error: the simulate stage failed: worker pools could not reach Parsl's "
                           "interchange (they tried tcp://127.0.0.1:"), line
    assert f"set kubernetes.interchange_address in {site}" in line and "Traceback" not in done.stderr
