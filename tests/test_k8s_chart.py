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
    assert {"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Job", "NetworkPolicy"} <= kinds
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
    ({"site": {"workerPort": 80}}, "/site/workerPort"),
    ({"tmpSizeLimit": "lots"}, "/tmpSizeLimit"),
    ({"driver": {"activeDeadlineSeconds": 0}}, "/driver/activeDeadlineSeconds"),
    ({"monitor": {"allowFrom": [{"namespace": "x"}]}}, "/monitor/allowFrom/0"),
    ({"networkPolicy": {"enabeld": False}}, "additional properties 'enabeld' not allowed"),
    ({"monitor": {"allowedHosts": ["a b"]}}, "/monitor/allowedHosts/0"),
    ({"monitor": {"allowedHosts": "spi.example.org"}}, "/monitor/allowedHosts"),
    ({"monitor": {"clusterDomain": "Cluster Local"}}, "/monitor/clusterDomain"),
])
def test_values_schema_refuses_bad_values(values, words):
    """values.schema.json: helm install/lint/template stop on a typo or an unsafe value, naming the key."""
    with pytest.raises(helm.HelmValuesError) as err:
        helm.Chart.load(str(CHART)).render(values, name="spi", namespace="xfel")
    assert words in str(err.value)


def site_pods(rendered: dict, tmp_path: Path) -> dict[str, dict]:
    """The worker pod and driver Job the site in the ConfigMap would create (spibatch's own dry run)."""
    from spibatch.backends import load_site, provider_for

    (tmp_path / "site.yaml").write_text(rendered["ConfigMap/spi-spibatch"]["data"]["site.yaml"])
    files = provider_for(load_site(tmp_path / "site.yaml")).render(Path("/shared/runs/spi"), ["spibatch"]).files
    return {name: objects(text)[0] for name, text in files.items()}


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector.get("matchLabels")) and selector["matchLabels"].items() <= labels.items()


def test_network_policies_let_workers_reach_only_the_interchange(tmp_path):
    rendered = render("default")
    worker_pod = site_pods(rendered, tmp_path)["worker-pod.yaml"]
    driver_labels = rendered["Job/spi-spibatch-driver"]["spec"]["template"]["metadata"]["labels"]
    port = yaml.safe_load(rendered["ConfigMap/spi-spibatch"]["data"]["site.yaml"])["kubernetes"]["worker_port"]
    assert port == 54000 and f"--port={port} " in worker_pod["spec"]["containers"][0]["args"][1]

    workers = rendered["NetworkPolicy/spi-spibatch-worker"]["spec"]
    assert matches(workers["podSelector"], worker_pod["metadata"]["labels"])
    assert not matches(workers["podSelector"], driver_labels)
    assert sorted(workers["policyTypes"]) == ["Egress", "Ingress"] and workers["ingress"] == []
    (egress,) = workers["egress"]
    assert egress["ports"] == [{"protocol": "TCP", "port": port}]
    (peer,) = egress["to"]
    assert list(peer) == ["podSelector"] and matches(peer["podSelector"], driver_labels)

    driver = rendered["NetworkPolicy/spi-spibatch-driver"]["spec"]
    assert matches(driver["podSelector"], driver_labels) and driver["policyTypes"] == ["Ingress"]
    (ingress,) = driver["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": port}]
    (peer,) = ingress["from"]
    assert list(peer) == ["podSelector"] and matches(peer["podSelector"], worker_pod["metadata"]["labels"])

    other = render("default", site={"workerPort": 50123})
    assert other["NetworkPolicy/spi-spibatch-worker"]["spec"]["egress"][0]["ports"][0]["port"] == 50123
    assert "--port=50123 " in site_pods(other, tmp_path)["worker-pod.yaml"]["spec"]["containers"][0]["args"][1]


def test_monitor_is_reachable_only_from_its_namespace_unless_opened():
    rendered = render("default")
    monitor_labels = rendered["Deployment/spi-spibatch-monitor"]["spec"]["template"]["metadata"]["labels"]
    policy = rendered["NetworkPolicy/spi-spibatch-monitor"]["spec"]
    assert matches(policy["podSelector"], monitor_labels) and policy["policyTypes"] == ["Ingress"]
    (ingress,) = policy["ingress"]
    assert ingress["from"] == [{"podSelector": {}}]          # any pod, this namespace only
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8765}]
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    opened = render("default", monitor={"allowFrom": [peer]})["NetworkPolicy/spi-spibatch-monitor"]["spec"]
    assert opened["ingress"][0]["from"] == [{"podSelector": {}}, peer]
    assert validate(render("default", monitor={"allowFrom": [peer]})["NetworkPolicy/spi-spibatch-monitor"]) == []
    assert "NetworkPolicy/spi-spibatch-monitor" not in render("cephfs")          # no monitor, no policy for it
    assert not [k for k in render("default", networkPolicy={"enabled": False}) if k.startswith("NetworkPolicy/")]


def test_tmp_is_size_limited_in_every_pod(tmp_path):
    from spibatch.backends.k8s_checks import pod_spec

    for values, size in (({}, "1Gi"), ({"tmpSizeLimit": "256Mi"}, "256Mi")):
        rendered = render_values(values)
        pods = [obj for obj in rendered.values() if pod_spec(obj) is not None]
        pods += list(site_pods(rendered, tmp_path).values())
        assert len(pods) == 4                                    # driver, monitor, and the site's worker + Job
        for obj in pods:
            tmp = [v for v in pod_spec(obj)["volumes"] if v["name"] == "tmp"]
            assert tmp == [{"name": "tmp", "emptyDir": {"sizeLimit": size}}], obj["metadata"]["name"]


def render_values(values: dict) -> dict[str, dict]:
    """The chart's objects for ``values`` as given (render() merges into a profile)."""
    text = helm.Chart.load(str(CHART)).render(values, name="spi", namespace="xfel", is_install=True)
    return {f"{o['kind']}/{o['metadata']['name']}": o for n, t in text.items() if n.endswith(".yaml") for o in objects(t)}


def test_driver_job_has_a_deadline():
    assert render("default")["Job/spi-spibatch-driver"]["spec"]["activeDeadlineSeconds"] == 86400
    assert render("default", driver={"activeDeadlineSeconds": 3600})["Job/spi-spibatch-driver"]["spec"][
        "activeDeadlineSeconds"] == 3600
    assert "activeDeadlineSeconds" not in render("default", driver={"activeDeadlineSeconds": None})[
        "Job/spi-spibatch-driver"]["spec"]


def test_monitor_probes_ask_healthz():
    container = render("default")["Deployment/spi-spibatch-monitor"]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    assert container["ports"] == [{"name": "http", "containerPort": 8765}]


def test_notes_say_how_to_enforce_restricted_pod_security():
    """The chart does not create its own release namespace (`helm install -n` needs it first, and
    `helm uninstall` would delete it with the results' claim): NOTES.txt (and the README) give the label."""
    text = helm.Chart.load(str(CHART)).render({}, name="spi", namespace="xfel", is_install=True)
    notes = next(t for n, t in text.items() if n.endswith("NOTES.txt"))
    assert ("kubectl label namespace xfel pod-security.kubernetes.io/enforce=restricted "
            "pod-security.kubernetes.io/enforce-version=latest") in notes
    assert not [n for n in text if "namespace" in n.lower()]


def monitor_env(rendered: dict) -> list[dict]:
    return rendered["Deployment/spi-spibatch-monitor"]["spec"]["template"]["spec"]["containers"][0]["env"]


@pytest.mark.parametrize("pod_ip, probe_host", [("10.42.0.17", "10.42.0.17:8765"), ("fd00::17", "[fd00::17]:8765")])
def test_monitor_answers_to_its_probes_service_and_port_forward_only(monkeypatch, tmp_path, pod_ip, probe_host):
    """The monitor listens on 0.0.0.0 and refuses unknown Host headers: the chart hands it the names it is
    reached by.  The env as Kubernetes would expand it ($(POD_IP) from the downward API) goes through
    `spibatch monitor`'s own reading, into the real app: the probes' Host (the pod IP) and port-forwarded
    browsers pass, a foreign name does not."""
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    from monitor_runs import local_client

    from spibatch.monitor.guards import allowed_hosts
    from spibatch.monitor.launch import hosts_from

    env = monitor_env(render("default"))
    names = [e["name"] for e in env]
    assert names.index("POD_IP") < names.index("SPIBATCH_MONITOR_ALLOWED_HOSTS")     # $(POD_IP) expands
    assert env[names.index("POD_IP")]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    value = env[names.index("SPIBATCH_MONITOR_ALLOWED_HOSTS")]["value"]
    assert value.split(",") == ["spi-spibatch-monitor", "spi-spibatch-monitor.xfel", "spi-spibatch-monitor.xfel.svc",
                                "spi-spibatch-monitor.xfel.svc.cluster.local", "$(POD_IP)", "127.0.0.1", "localhost"]
    monkeypatch.setenv("SPIBATCH_MONITOR_ALLOWED_HOSTS", value.replace("$(POD_IP)", pod_ip))
    client = local_client(tmp_path, allowed_hosts=allowed_hosts("0.0.0.0", hosts_from(None)))
    for host in (probe_host, "spi-spibatch-monitor:8765", "spi-spibatch-monitor.xfel.svc.cluster.local:8765",
                 "127.0.0.1:8765", "localhost:8765"):
        assert client.get("/healthz", headers={"host": host}).status_code == 200, host
    for host in ("evil.example.com", "10.42.0.18:8765", ""):
        assert client.get("/healthz", headers={"host": host}).status_code == 400, host


def test_monitor_allowed_hosts_from_values():
    rendered = render("default", monitor={"allowedHosts": ["spi-monitor.example.org", "*.beamline.example"],
                                          "clusterDomain": "k8s.example"})
    value = {e["name"]: e.get("value") for e in monitor_env(rendered)}["SPIBATCH_MONITOR_ALLOWED_HOSTS"]
    assert value.endswith(",spi-monitor.example.org,*.beamline.example")
    assert "spi-spibatch-monitor.xfel.svc.k8s.example" in value.split(",")
    assert validate(rendered["Deployment/spi-spibatch-monitor"]) == []
