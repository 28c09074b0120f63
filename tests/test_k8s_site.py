"""The Kubernetes site without a cluster: the dry run's manifests (snapshots, schema, our checks),
the Parsl config it builds, and every bad input as one line."""

import os
from pathlib import Path

import pytest
import yaml

from k8s_validate import objects, validate

pytest.importorskip("kubernetes", reason="the kubernetes client is in the [k8s] extra")

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "site_configs" / "kubernetes-example.yaml"
SNAPSHOTS = Path(__file__).parent / "snapshots"
RUN_DIR = Path("/shared/runs/demo-20260101T000000Z")
COMMAND = ["spibatch", "run", "/etc/spibatch/pipeline.yaml", "--site", "/etc/spibatch/site.yaml",
           "--out", str(RUN_DIR)]


def site_file(tmp_path: Path, change=None) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    if change:
        change(data)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_example_dry_run_matches_the_snapshots():
    """tests/snapshots/k8s-*.yaml hold the exact manifests; SPIBATCH_UPDATE_SNAPSHOTS=1 rewrites them."""
    from spibatch.backends import load_site, provider_for

    rendered = provider_for(load_site(EXAMPLE)).render(RUN_DIR, COMMAND).files
    assert set(rendered) == {"worker-pod.yaml", "driver-job.yaml"}
    for name, text in rendered.items():
        snapshot = SNAPSHOTS / f"k8s-{name}"
        if os.environ.get("SPIBATCH_UPDATE_SNAPSHOTS"):
            snapshot.write_text(text)
        assert text == snapshot.read_text(), f"{name} differs from {snapshot}"


def test_dry_run_manifests_are_valid_and_restricted():
    from spibatch.backends import load_site, provider_for

    rendered = provider_for(load_site(EXAMPLE)).render(RUN_DIR, COMMAND).files
    pod = objects(rendered["worker-pod.yaml"])[0]
    job = objects(rendered["driver-job.yaml"])[0]
    for obj in (pod, job):
        assert validate(obj) == []
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.example.org/spi/spibatch:0.1.0"
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}
    assert {"name": "shared", "mountPath": "/shared"} in container["volumeMounts"]
    assert pod["spec"]["volumes"][0] == {"name": "shared", "persistentVolumeClaim": {"claimName": "spibatch-shared"}}
    assert "process_worker_pool.py" in container["args"][1] and "--max_workers_per_node=2" in container["args"][1]
    assert pod["metadata"]["namespace"] == "spibatch"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == COMMAND
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "spibatch-driver"


def test_gpus_and_extras_reach_the_pod(tmp_path):
    from spibatch.backends import load_site, provider_for

    def change(d):
        d["kubernetes"].update(gpus=2, service_account="workers", image_pull_secret="regcred",
                               node_selector={"nvidia.com/gpu.present": "true"}, worker_init="module load cuda")
    pod = objects(provider_for(load_site(site_file(tmp_path, change))).render(RUN_DIR, COMMAND).files["worker-pod.yaml"])[0]
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "2"
    assert pod["spec"]["serviceAccountName"] == "workers"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["spec"]["containers"][0]["args"][1].startswith("module load cuda\n")
    assert validate(pod) == []


def test_parsl_config_uses_the_kubernetes_provider(tmp_path, monkeypatch):
    pytest.importorskip("parsl", reason="parsl is in the [platform] extra")
    from parsl.providers import KubernetesProvider

    from k8s_emulator import Cluster
    from spibatch.backends import load_site, provider_for

    with Cluster({}) as cluster:                      # the provider loads a kubeconfig when built
        kubeconfig = str(cluster.write_kubeconfig(tmp_path / "kubeconfig"))
        monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
        monkeypatch.setenv("SPIBATCH_INTERCHANGE_ADDRESS", "10.1.2.3")
        config = provider_for(load_site(EXAMPLE)).parsl_config(RUN_DIR)
    assert config.usage_tracking == 0 and config.run_dir == str(RUN_DIR / "runinfo")
    (executor,) = config.executors
    provider = executor.provider
    assert executor.label == "tasks" and executor.address == "10.1.2.3"    # the driver pod's IP
    assert isinstance(provider, KubernetesProvider)
    assert (provider.namespace, provider.image, provider.max_blocks) == ("spibatch", "registry.example.org/spi/spibatch:0.1.0", 4)
    assert provider.persistent_volumes == [("spibatch-shared", "/shared")]
    assert executor.max_workers_per_node == 2
    assert executor.encrypted and executor.worker_port is None     # CurveZMQ: the pods connect over the network


@pytest.mark.parametrize("change, field, words", [
    (lambda d: d["kubernetes"].update(colour="blue"), "kubernetes.colour", "colour"),
    (lambda d: d["kubernetes"].update(namespace="Not_A_Name"), "kubernetes.namespace", "DNS-1123"),
    (lambda d: d["kubernetes"].update(mount_path="shared"), "kubernetes.mount_path", "absolute"),
])
def test_bad_site_keys_are_one_line_at_load(tmp_path, change, field, words):
    from spibatch.backends import load_site
    from spibatch.errors import InputError

    with pytest.raises(InputError) as err:
        load_site(site_file(tmp_path, change))
    line = str(err.value)
    assert "\n" not in line and str(tmp_path / "site.yaml") in line and field in line and words in line


@pytest.mark.parametrize("change, run_dir, field, words", [
    (lambda d: d["kubernetes"].update(memory_limit="4 GB"), RUN_DIR, "kubernetes.memory_limit", "'4 GB' is not a quantity"),
    (lambda d: d["kubernetes"].update(cpu_request="two"), RUN_DIR, "kubernetes.cpu_request", "'two' is not a quantity"),
    (lambda d: d["kubernetes"].update(cpu_request="4", cpu_limit="2"), RUN_DIR, "kubernetes", "above its limit"),
    (lambda d: d["kubernetes"].update(memory_request="-4Gi"), RUN_DIR, "kubernetes.memory_request", "is negative"),
    (lambda d: d["kubernetes"].update(tmp_size_limit="0"), RUN_DIR, "kubernetes.tmp_size_limit", "not above 0"),
    (lambda d: d["kubernetes"].update(mount_path="/"), RUN_DIR, "kubernetes.mount_path", "over the pod's root"),
    (None, Path("/scratch/runs/r1"), "kubernetes.mount_path", "is not inside the PVC mount path /shared"),
    (lambda d: d.update(container={"runtime": "none"}), RUN_DIR, "container.image", "no image for the worker pods"),
    (lambda d: d["container"].update(runtime="apptainer", image="/x.sif"), RUN_DIR, "container.runtime", "OCI images"),
])
def test_bad_input_is_one_line_before_any_cluster_call(tmp_path, monkeypatch, change, run_dir, field, words):
    """Offline problems are found first: no kubeconfig is needed to report them."""
    from spibatch.backends import load_site, provider_for
    from spibatch.errors import InputError

    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))
    with pytest.raises(InputError) as err:
        provider_for(load_site(site_file(tmp_path, change))).preflight(run_dir)
    line = str(err.value)
    assert "\n" not in line and str(tmp_path / "site.yaml") in line and field in line and words in line, line


def test_no_cluster_is_one_line(tmp_path, monkeypatch):
    from spibatch.backends import load_site, provider_for
    from spibatch.errors import InputError

    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(InputError) as err:
        provider_for(load_site(site_file(tmp_path))).preflight(RUN_DIR)
    assert "no Kubernetes cluster configured" in str(err.value) and "KUBECONFIG" in str(err.value)


def test_checks_name_each_missing_restricted_field():
    from spibatch.backends.k8s_checks import problems

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "Bad_Name"},
           "spec": {"containers": [{"name": "c", "image": "i", "volumeMounts": [{"name": "data", "mountPath": "/d"}],
                                    "resources": {"limits": {"memory": "1Gi"}, "requests": {"memory": "2Gi"}}}],
                    "volumes": [{"name": "unused", "emptyDir": {}}]}}
    found = "\n".join(problems(pod))
    for words in ("not a DNS-1123 subdomain", "'data' names no volume", "'unused' is mounted by no container",
                  "runAsNonRoot", "allowPrivilegeEscalation", "drop lacks ALL", "seccompProfile",
                  "readOnlyRootFilesystem", "request memory=2Gi is above its limit 1Gi"):
        assert words in found, words


def test_dry_run_without_a_cluster_prints_the_manifests_then_skips(tmp_path, monkeypatch):
    """With the client but no kubeconfig: the manifests, then one `skipped:` line per question to the API
    server; preflight (a real run) stops on the same problem."""
    from spibatch.backends import load_site, provider_for

    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    provider = provider_for(load_site(EXAMPLE))
    rendered = provider.dry_run(RUN_DIR, COMMAND)
    assert rendered.files == provider.render(RUN_DIR, COMMAND).files
    reason = "no Kubernetes cluster configured (no kubeconfig, not inside a pod) (set KUBECONFIG or run where " \
             "`kubectl get pods` works)"
    assert rendered.checks == [f"skipped: namespace spibatch exists: {reason}",
                               f"skipped: PersistentVolumeClaim spibatch-shared exists in namespace spibatch: {reason}",
                               f"skipped: the API server admits worker-pod.yaml (dryRun=All): {reason}"]
    assert list(rendered.listing()) == ["worker-pod.yaml", "driver-job.yaml", "checks.txt"]


def test_run_dir_outside_the_mount_names_a_flag_that_exists(tmp_path):
    from spibatch.backends import load_site, provider_for
    from spibatch.errors import InputError

    with pytest.raises(InputError) as err:
        provider_for(load_site(EXAMPLE)).dry_run(Path("/scratch/r1"), COMMAND)
    line = str(err.value)
    assert "--out" in line and "--runs-dir" not in line and "output.runs_dir" in line


@pytest.mark.parametrize("value", ["1", "500m", "2Gi", "4 GB", "two", "1e3", "1.5", "0.5Ki", "1ki", "1mi", "", "Gi",
                                   "1Ei", "1E", "-1", "nan", "inf", "1e999999999999Gi", "12n", "1u", "+1", 3, 2.5])
def test_our_quantities_are_the_clients(value):
    """k8s_checks.parse_quantity (no client needed) answers as kubernetes.utils.parse_quantity."""
    from kubernetes.utils import parse_quantity as theirs

    from spibatch.backends.k8s_checks import parse_quantity as ours

    def answer(parse):
        try:
            return parse(value)
        except Exception as exc:   # noqa: BLE001 - compare whatever each raises
            return type(exc)

    assert repr(answer(ours)) == repr(answer(theirs))     # repr: Decimal('NaN') is not equal to itself


def test_worker_port_and_tmp_size_reach_the_pod(tmp_path):
    from spibatch.backends import load_site, provider_for
    from spibatch.errors import InputError

    def change(d):
        d["kubernetes"].update(worker_port=54321, tmp_size_limit="512Mi")
    files = provider_for(load_site(site_file(tmp_path, change))).render(RUN_DIR, COMMAND).files
    pod, job = objects(files["worker-pod.yaml"])[0], objects(files["driver-job.yaml"])[0]
    assert "--port=54321 " in pod["spec"]["containers"][0]["args"][1]
    for spec in (pod["spec"], job["spec"]["template"]["spec"]):
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "512Mi"}} in spec["volumes"]
    with pytest.raises(InputError, match="kubernetes.tmp_size_limit: 'big' is not a quantity"):
        provider_for(load_site(site_file(tmp_path, lambda d: d["kubernetes"].update(tmp_size_limit="big")))).preflight(RUN_DIR)
