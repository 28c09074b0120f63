"""The Helm chart rendered with real Helm (helm-python-sdk: Helm v4's Go library), linted, and
every object validated against the Kubernetes OpenAPI schema and our own checks, per values profile."""

from pathlib import Path

import pytest
import yaml

from k8s_validate import objects, validate

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm v4) is in the [test] extra")

CHART = Path(__file__).resolve().parents[1] / "charts" / "spibatch"
PROFILES = sorted(p.stem for p in (CHART / "ci").glob("*.yaml"))


def render(profile: str, **extra) -> dict[str, dict]:
    values = yaml.safe_load((CHART / "ci" / f"{profile}.yaml").read_text()) or {}
    for key, value in extra.items():
        values.setdefault(key, {}).update(value)
    text = helm.Chart.load(str(CHART)).render(values, name="spi", namespace="xfel", is_install=True)
    found = {}
    for name, manifest in text.items():
        if name.endswith(".yaml"):
            for obj in objects(manifest):
                found[f"{obj['kind']}/{obj['metadata']['name']}"] = obj
    return found


def test_profiles_exist():
    assert {"default", "gpu", "cephfs"} <= set(PROFILES)


@pytest.mark.parametrize("profile", PROFILES)
def test_chart_lints(profile):
    values = yaml.safe_load((CHART / "ci" / f"{profile}.yaml").read_text()) or {}
    report = helm.lint(str(CHART), values, strict=True, kube_version="v1.33.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("profile", PROFILES)
def test_every_rendered_object_is_valid(profile):
    rendered = render(profile)
    kinds = {key.split("/")[0] for key in rendered}
    assert {"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Job"} <= kinds
    for obj in rendered.values():
        assert validate(obj) == []


@pytest.mark.parametrize("profile", PROFILES)
def test_site_in_the_configmap_loads_and_its_pods_are_valid(profile, tmp_path):
    from spibatch.backends import load_site, provider_for
    from spibatch.config import Pipeline

    rendered = render(profile)
    data = rendered["ConfigMap/spi-spibatch"]["data"]
    Pipeline.model_validate(yaml.safe_load(data["pipeline.yaml"]))          # a valid pipeline file
    (tmp_path / "site.yaml").write_text(data["site.yaml"])
    site = load_site(tmp_path / "site.yaml")
    assert site.provider == "kubernetes" and site.emc_mode == "htc" and site.kubernetes.namespace == "xfel"
    job = rendered["Job/spi-spibatch-driver"]
    mount = job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"]
    assert site.kubernetes.mount_path == mount
    claim = job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert site.kubernetes.pvc == claim                                   # workers mount the driver's PVC
    assert site.kubernetes.driver_service_account == job["spec"]["template"]["spec"]["serviceAccountName"]
    manifests = provider_for(site).render(Path(mount) / "runs" / "spi",
                                          job["spec"]["template"]["spec"]["containers"][0]["command"]).files
    for text in manifests.values():
        for obj in objects(text):
            assert validate(obj) == []


def test_role_allows_only_pods_in_its_namespace():
    rendered = render("default")
    role = rendered["Role/spi-spibatch-driver"]
    assert role["metadata"].get("namespace") in (None, "xfel")
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {("pods", v) for v in ("create", "get", "list", "watch", "delete")} | {("persistentvolumeclaims", "get")}
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    assert not any(obj["kind"].startswith("Cluster") for obj in rendered.values())
    binding = rendered["RoleBinding/spi-spibatch-driver"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "spi-spibatch-driver", "namespace": "xfel"}]


def test_profiles_change_what_they_say():
    gpu = render("gpu")["ConfigMap/spi-spibatch"]["data"]["site.yaml"]
    assert yaml.safe_load(gpu)["kubernetes"]["gpus"] == 1
    ceph = render("cephfs")
    assert ceph["PersistentVolumeClaim/spi-spibatch-shared"]["spec"]["storageClassName"] == "cephfs"
    assert ceph["PersistentVolumeClaim/spi-spibatch-shared"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "Deployment/spi-spibatch-monitor" not in ceph
    monitor = render("default")["Deployment/spi-spibatch-monitor"]["spec"]["template"]["spec"]["containers"][0]
    assert monitor["command"] == ["spibatch", "monitor", "/shared/runs", "--host", "0.0.0.0", "--port", "8765"]
    assert render("default")["Service/spi-spibatch-monitor"]["spec"]["type"] == "ClusterIP"


def test_checks_catch_a_bad_value():
    """A quantity Kubernetes refuses reaches the rendered Job; our checks name it."""
    rendered = render("default", driver={"resources": {"requests": {"cpu": "lots"}, "limits": {"cpu": "1"}}})
    found = validate(rendered["Job/spi-spibatch-driver"])
    assert any("resources.requests.cpu" in line and "'lots' is not a quantity" in line for line in found), found


@pytest.mark.parametrize("values, words", [
    ({"site": {"wokers": 3}}, "additional properties 'wokers' not allowed"),
    ({"podSecurity": {"runAsUser": 0}}, "/podSecurity/runAsUser"),
    ({"sharedStorage": {"mountPath": "shared"}}, "/sharedStorage/mountPath"),
    ({"site": {"emcMode": "hpc"}}, "/site/emcMode"),
])
def test_values_schema_refuses_bad_values(values, words):
    """values.schema.json: helm install/lint/template stop on a typo or an unsafe value, naming the key."""
    with pytest.raises(helm.HelmValuesError) as err:
        helm.Chart.load(str(CHART)).render(values, name="spi", namespace="xfel")
    assert words in str(err.value)
