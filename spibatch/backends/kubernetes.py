"""The Kubernetes site: Parsl's KubernetesProvider, one worker pod per block (HTC mode).

The driver (``spibatch run``, usually the Helm chart's Job inside the cluster) runs
Parsl's interchange; each worker pod runs ``process_worker_pool.py`` from the site's
image and connects back to it (``interchange_address``: the driver pod's IP, which
the chart passes in ``SPIBATCH_INTERCHANGE_ADDRESS``).  Pods see the run directory
because the shared-filesystem PVC is mounted at ``mount_path``, which must contain
it, so every file name means the same in every pod.  Pods meet the "restricted"
Pod Security Standard (non-root, read-only root filesystem with an emptyDir at
/tmp, no privilege escalation, no capabilities, seccomp RuntimeDefault): Parsl's
provider builds pods without these fields, so :func:`worker_pod` builds the pod
and the provider subclass only replaces ``_create_pod``; submit/status/cancel are
Parsl's.  :func:`render` and the provider call the same :func:`worker_pod`, so the
dry run shows the very pod that would be created.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath

import yaml
from pydantic import Field, field_validator

from spibatch.backends import parsl_common as common
from spibatch.backends.k8s_checks import is_label, is_subdomain, problems, quantity_problem
from spibatch.yaml_models import Section
from spibatch.errors import InputError

ADDRESS_ENV = "SPIBATCH_INTERCHANGE_ADDRESS"   # set by the chart's Job from the downward API (status.podIP)
RENDER_JOB_ID = "00000000"                      # the dry run's job id (Parsl draws 8 random hex digits)
APP_LABELS = {"app.kubernetes.io/name": "spibatch", "app.kubernetes.io/component": "worker"}


class Options(Section):
    """The ``kubernetes:`` section (as Parsl's KubernetesProvider, plus the shared filesystem)."""

    namespace: str = Field("default", description="namespace the worker pods go to (must exist)")
    service_account: str | None = Field(None, description="service account of the worker pods (none: the "
                                        "namespace's default; workers need no API access)")
    driver_service_account: str = Field("spibatch-driver", description="service account of the driver Job: may "
                                        "create, watch and delete pods in the namespace (the chart's Role)")
    pvc: str = Field("spibatch-shared", description="PersistentVolumeClaim of the shared filesystem (ReadWriteMany)")
    mount_path: str = Field("/shared", description="where the PVC is mounted in every pod; must contain the run "
                            "directory, which has the same path in the driver and the workers")
    workers_per_pod: int = Field(1, ge=1, description="Parsl workers per pod; pods at most = ceil(workers / this)")
    cpu_request: str = Field("1", description="CPU request per pod (a Kubernetes quantity: 1, 500m, ...)")
    cpu_limit: str = Field("2", description="CPU limit per pod")
    memory_request: str = Field("2Gi", description="memory request per pod (a quantity: 512Mi, 4Gi, ...)")
    memory_limit: str = Field("4Gi", description="memory limit per pod")
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu per pod (request = limit); needs the NVIDIA device "
                      "plugin and a CUDA image")
    run_as_user: int = Field(1000, ge=1, description="UID of the pods (non-root; the image's user is 1000)")
    run_as_group: int = Field(1000, ge=1, description="GID of the pods, also their fsGroup")
    image_pull_secret: str | None = Field(None, description="secret for a private registry")
    node_selector: dict[str, str] = Field(default_factory=dict, description="node labels the pods must match")
    interchange_address: str | None = Field(None, description=f"address the pods reach the driver at; default: "
                                            f"${ADDRESS_ENV} (the chart sets it to the driver pod's IP), else "
                                            "this host's address")
    pod_name: str = Field("spibatch-worker", description="pod name prefix (Parsl appends .<job id>)")
    worker_init: str = Field("", description="shell lines run in each pod before the workers start")
    strategy_period_s: float = Field(5.0, gt=0, description="how often Parsl looks at the queue (s)")
    max_idletime_s: float = Field(60.0, gt=0, description="an idle pod is deleted after this many seconds")

    @field_validator("namespace", "pvc", "service_account", "driver_service_account", "image_pull_secret")
    @classmethod
    def _label(cls, v):
        if v is not None and not is_label(v):
            raise ValueError("a DNS-1123 label: lower-case letters, digits and '-', at most 63 characters")
        return v

    @field_validator("pod_name")
    @classmethod
    def _subdomain(cls, v):
        if not is_subdomain(v) or len(v) > 200:
            raise ValueError("a DNS-1123 subdomain of at most 200 characters (e.g. spibatch-worker)")
        return v

    @field_validator("mount_path")
    @classmethod
    def _absolute(cls, v):
        if not v.startswith("/"):
            raise ValueError("an absolute path (e.g. /shared)")
        return v


def max_pods(site) -> int:
    """Pods at once: enough for ``site.workers`` workers."""
    return max(1, math.ceil(site.workers / site.kubernetes.workers_per_pod))


def node_cores(site) -> int:
    """CPUs one pod may use (its CPU limit, at least 1): the pipeline splits them among the pod's workers."""
    from kubernetes.utils import parse_quantity

    return max(1, int(parse_quantity(site.kubernetes.cpu_limit)))


def ranks_per_node(site) -> int:
    """Workers sharing one pod."""
    return site.kubernetes.workers_per_pod


def _run_dir_text(run_dir: Path) -> str:
    return str(PurePosixPath(os.path.abspath(run_dir)))


def worker_pod(site, run_dir: Path, pod_name: str, job_id: str, cmd_string: str) -> dict:
    """The worker pod manifest (a dict as the API takes it): Parsl's pod plus pod security.

    cmd_string: what Parsl runs in the pod (worker_init, then the worker pool command).
    """
    opts = site.kubernetes
    requests = {"cpu": opts.cpu_request, "memory": opts.memory_request}
    limits = {"cpu": opts.cpu_limit, "memory": opts.memory_limit}
    if opts.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(opts.gpus)
    env = [{"name": "HOME", "value": "/tmp"},
           {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
           {"name": "NUMBA_CACHE_DIR", "value": "/tmp/numba"},
           {"name": "SPIBATCH_RUN_DIR", "value": _run_dir_text(run_dir)}]
    spec: dict = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,      # workers never call the API server
        "securityContext": {"runAsNonRoot": True, "runAsUser": opts.run_as_user, "runAsGroup": opts.run_as_group,
                            "fsGroup": opts.run_as_group, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "worker",
            "image": site.container.image,
            "command": ["/bin/bash"],
            "args": ["-c", cmd_string],
            "workingDir": _run_dir_text(run_dir),
            "env": env,
            "resources": {"requests": requests, "limits": limits},
            "volumeMounts": [{"name": "shared", "mountPath": opts.mount_path},
                             {"name": "tmp", "mountPath": "/tmp"}],
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        }],
        "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": opts.pvc}},
                    {"name": "tmp", "emptyDir": {}}],
    }
    if opts.service_account:
        spec["serviceAccountName"] = opts.service_account
    if opts.image_pull_secret:
        spec["imagePullSecrets"] = [{"name": opts.image_pull_secret}]
    if opts.node_selector:
        spec["nodeSelector"] = dict(opts.node_selector)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": opts.namespace,
                         "labels": {"parsl-job-id": job_id, **APP_LABELS, "spibatch/site": site.name}},
            "spec": spec}


def _provider_class():
    from parsl.providers import KubernetesProvider

    class SpibatchKubernetesProvider(KubernetesProvider):
        """Parsl's KubernetesProvider whose pods are :func:`worker_pod` (pod security, shared PVC, /tmp)."""

        def __init__(self, site, run_dir: Path, **kwargs):
            super().__init__(**kwargs)
            self.site, self.run_dir = site, Path(run_dir)

        def _create_pod(self, image, pod_name, job_id, port=80, cmd_string=None, volumes=(),
                        service_account_name=None, annotations=None):
            pod = worker_pod(self.site, self.run_dir, pod_name, job_id, cmd_string)
            self.kube_client.create_namespaced_pod(namespace=self.namespace, body=pod)

    return SpibatchKubernetesProvider


def _provider(site, run_dir: Path):
    from kubernetes.utils import parse_quantity

    opts = site.kubernetes
    return _provider_class()(
        site, run_dir, image=site.container.image or "", namespace=opts.namespace, init_blocks=1, min_blocks=0,
        max_blocks=max_pods(site), max_cpu=float(parse_quantity(opts.cpu_limit)), max_mem=opts.memory_limit,
        init_cpu=float(parse_quantity(opts.cpu_request)), init_mem=opts.memory_request,
        worker_init=worker_init(site), pod_name=opts.pod_name, persistent_volumes=[(opts.pvc, opts.mount_path)],
        service_account_name=opts.service_account, run_as_non_root=True, user_id=str(opts.run_as_user),
        group_id=str(opts.run_as_group), secret=opts.image_pull_secret)


def worker_init(site) -> str:
    """Shell lines a pod runs before the worker pool (the user's ``worker_init``)."""
    return site.kubernetes.worker_init.strip()


def interchange_address(site) -> str:
    """Where pods reach the driver: the option, else $SPIBATCH_INTERCHANGE_ADDRESS, else this host."""
    if site.kubernetes.interchange_address:
        return site.kubernetes.interchange_address
    if os.environ.get(ADDRESS_ENV):
        return os.environ[ADDRESS_ENV]
    from parsl.addresses import address_by_hostname

    return address_by_hostname()


def _executor(site, provider, run_dir: Path, address: str):
    """The HTEX of worker pods: Parsl's own launch command (the pod is the container), workers_per_pod each."""
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    return common.htex(site, provider, run_dir, address=address, gpus=site.kubernetes.gpus,
                       workers=site.kubernetes.workers_per_pod, launch=DEFAULT_LAUNCH_CMD)


def parsl_config(site, run_dir: Path):
    """One HTEX whose blocks are worker pods (KubernetesProvider); needs a kubeconfig or in-cluster access."""
    run_dir = Path(os.path.abspath(run_dir))
    executor = _executor(site, _provider(site, run_dir), run_dir, interchange_address(site))
    opts = site.kubernetes
    return common.config([executor], run_dir, strategy_period=opts.strategy_period_s,
                         max_idletime=opts.max_idletime_s)


def driver_job(site, run_dir: Path, command: list[str]) -> dict:
    """A Job that runs ``command`` (``spibatch run ...``) in the cluster as the Parsl driver."""
    pod = worker_pod(site, run_dir, "driver", "driver", "")
    container = pod["spec"]["containers"][0]
    container.update(name="driver", command=list(command), workingDir=site.kubernetes.mount_path)
    del container["args"]
    pod["spec"]["serviceAccountName"] = site.kubernetes.driver_service_account
    pod["spec"]["automountServiceAccountToken"] = True   # the driver creates and deletes the worker pods
    container["env"].append({"name": ADDRESS_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    labels = {**APP_LABELS, "app.kubernetes.io/component": "driver", "spibatch/site": site.name}
    pod["spec"]["restartPolicy"] = "Never"
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"{site.name}-driver", "namespace": site.kubernetes.namespace, "labels": labels},
            "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": dict(labels)}, "spec": pod["spec"]}}}


def _dump(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False, width=1000)


def render(site, run_dir: Path, command: list[str]) -> dict[str, str]:
    """The dry run: the worker pod the provider would create and the driver Job, as YAML.

    The pod's job id is shown as 00000000 and the interchange's ports and address as
    placeholders (Parsl knows them only once the interchange runs).
    """
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD
    from parsl.providers.kubernetes.template import template_string
    from parsl.utils import sanitize_dns_subdomain_rfc1123

    run_dir = Path(os.path.abspath(run_dir))

    class _Shown:   # what format_launch reads of an executor
        cores_per_worker, launch_cmd, worker_logdir_root = 1.0, DEFAULT_LAUNCH_CMD, common.worker_logdir(run_dir)
        heartbeat_period, heartbeat_threshold = common.HEARTBEAT.values()

    launch = common.format_launch(_Shown, site.kubernetes.workers_per_pod)
    cmd_string = template_string.format(command=launch, worker_init=worker_init(site))
    pod_name = f"{sanitize_dns_subdomain_rfc1123(site.kubernetes.pod_name)}.{RENDER_JOB_ID}"
    pod = worker_pod(site, run_dir, pod_name, RENDER_JOB_ID, cmd_string)
    return {"worker-pod.yaml": _dump(pod), "driver-job.yaml": _dump(driver_job(site, run_dir, command))}


def _fail(site, field: str, problem: str, fix: str):
    raise InputError(problem, path=site.source, field=f"kubernetes.{field}" if field else None, fix=fix)


def _check_offline(site, run_dir: Path) -> None:
    opts = site.kubernetes
    if not site.container.image:
        raise InputError("no image for the worker pods", path=site.source, field="container.image",
                         fix="set container.image to the spibatch image in your registry (see containers/)")
    if site.container.runtime in ("apptainer", "charliecloud"):
        raise InputError(f"Kubernetes runs OCI images, not {site.container.runtime}", path=site.source,
                         field="container.runtime", fix="set container.runtime: docker and container.image to an "
                         "image reference (registry/name:tag)")
    if site.emc_mode != "htc":
        raise InputError("EMC in hpc mode (one MPI job) is not supported on Kubernetes", path=site.source,
                         field="emc_mode", fix="set emc_mode: htc (one task per shard per iteration), or run "
                         "EMC in hpc mode on a Slurm site")
    for field in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):
        problem = quantity_problem(getattr(opts, field))
        if problem:
            _fail(site, field, problem, "write a Kubernetes quantity, e.g. 500m or 2 (CPU), 512Mi or 4Gi (memory)")
    run_text = _run_dir_text(run_dir)
    mount = opts.mount_path.rstrip("/") or "/"
    if not (run_text == mount or run_text.startswith(mount.rstrip("/") + "/")):
        _fail(site, "mount_path", f"the run directory {run_text} is not inside the PVC mount path {opts.mount_path}",
              "put the run directory on the shared filesystem (--runs-dir under mount_path), or set mount_path "
              "to the shared filesystem's path")
    pod = yaml.safe_load(render(site, run_dir, ["spibatch"])["worker-pod.yaml"])
    found = problems(pod)
    if found:
        _fail(site, "", f"the worker pod would be invalid: {found[0]}", "fix the kubernetes section")


def _api():
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
    except config.config_exception.ConfigException:
        config.load_incluster_config()
    return client.CoreV1Api()


def preflight(site, run_dir: Path) -> None:
    """Image, quantities, PVC mount path and the pod itself; then ask the API server that the
    namespace and the PVC exist.  InputError (one line) on the first problem."""
    _check_offline(site, run_dir)
    opts = site.kubernetes
    try:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
    except ImportError:
        raise InputError("the kubernetes client is not installed", path=site.source, field="provider",
                         fix="pip install 'spibatch[k8s]'") from None
    try:
        api = _api()
    except ConfigException:
        raise InputError("no Kubernetes cluster configured (no kubeconfig, not inside a pod)", path=site.source,
                         field="provider", fix="set KUBECONFIG or run where `kubectl get pods` works") from None
    try:
        api.read_namespace(opts.namespace)
    except ApiException as exc:
        if exc.status == 404:
            _fail(site, "namespace", f"namespace {opts.namespace} does not exist on the cluster",
                  f"create it (kubectl create namespace {opts.namespace}) or name an existing one")
        if exc.status != 403:   # a namespaced service account may not read namespaces: the PVC check below tells
            _fail(site, "namespace", f"the API server answered {exc.status} {exc.reason}", "check the cluster")
    try:
        api.read_namespaced_persistent_volume_claim(opts.pvc, opts.namespace)
    except ApiException as exc:
        if exc.status == 404:
            _fail(site, "pvc", f"PersistentVolumeClaim {opts.pvc} does not exist in namespace {opts.namespace}",
                  "install the Helm chart (it creates the PVC) or name an existing claim")
        if exc.status != 403:
            _fail(site, "pvc", f"the API server answered {exc.status} {exc.reason}", "check the cluster")


def check_rendered(site, files: dict[str, str]) -> list[str]:
    """Ask the API server to admit the dry run's worker pod without creating it (``dryRun=All``:
    schema, admission, pod security, quotas, RBAC).  One note; InputError when it refuses."""
    from kubernetes.client.exceptions import ApiException

    pod = yaml.safe_load(files["worker-pod.yaml"])
    try:
        _api().create_namespaced_pod(site.kubernetes.namespace, pod, dry_run="All")
    except ApiException as exc:
        reason = " ".join(str(getattr(exc, "body", "") or exc.reason).split())[:300]
        raise InputError(f"the API server refuses the worker pod ({exc.status}: {reason})", path=site.source,
                         field="kubernetes", fix="see the reason; fix the kubernetes section or the namespace's "
                         "policy") from None
    return [f"worker-pod.yaml: admitted by the API server (dry run, namespace {site.kubernetes.namespace}); "
            "nothing created"]
