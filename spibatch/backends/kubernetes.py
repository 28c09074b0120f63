"""The Kubernetes site: Parsl's KubernetesProvider, one worker pod per block (HTC mode).

The driver (``spibatch run``, usually the Helm chart's Job inside the cluster) runs
Parsl's interchange; each worker pod runs ``process_worker_pool.py`` from the site's
image and connects back to it (``interchange_address``: the driver pod's IP, which
the chart passes in ``SPIBATCH_INTERCHANGE_ADDRESS``), encrypted (CurveZMQ; the keys
are in the run directory's runinfo/, on the shared filesystem).  Pods see the run
directory because the shared-filesystem PVC is mounted at ``mount_path``, which must
contain it, so every file name means the same in every pod.  Pods meet the "restricted"
Pod Security Standard (:mod:`spibatch.backends.k8s_manifests`): Parsl's provider builds
pods without these fields, so our subclass of it only replaces ``_create_pod`` with
:func:`~spibatch.backends.k8s_manifests.worker_pod`; submit/status/cancel are Parsl's.
The dry run calls the same function, so it shows the very pod that would be created.

The dry run needs neither a cluster nor the ``kubernetes`` client: it checks the site
(quantities parsed by :mod:`spibatch.backends.k8s_checks`), prints the manifests, then
asks the API server what only it can tell (namespace, PVC, admission of the pod) and
says ``skipped:`` for each question when there is no client or no cluster.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml
from pydantic import Field, field_validator

from spibatch import parsl_lean
from spibatch.backends import parsl_common as common
from spibatch.backends.base import TASKS_LABEL, Check, Provider, Rendered
from spibatch.backends.k8s_checks import is_label, is_subdomain, parse_quantity, problems, quantity_problem
from spibatch.backends.k8s_manifests import ADDRESS_ENV, RENDER_JOB_ID, driver_job, dump, run_dir_text, worker_pod
from spibatch.yaml_models import Section


class KubernetesOptions(Section):
    """The ``kubernetes:`` section (as Parsl's KubernetesProvider, plus the shared filesystem)."""

    namespace: str = Field("default", description="namespace the worker pods go to (must exist)")
    service_account: str | None = Field(None, description="service account of the worker pods (none: the "
                                        "namespace's default; workers need no API access)")
    driver_service_account: str = Field("spibatch-driver", description="service account of the driver Job: may "
                                        "create, watch and delete pods in the namespace (the chart's Role)")
    pvc: str = Field("spibatch-shared", description="PersistentVolumeClaim of the shared filesystem (ReadWriteMany)")
    mount_path: str = Field("/shared", description="where the PVC is mounted in every pod; must contain the run "
                            "directory, which has the same path in the driver and the workers")
    workers_per_pod: int = Field(1, ge=1, le=1024, description="Parsl workers per pod; pods at most = ceil(workers / this)")
    cpu_request: str = Field("1", description="CPU request per pod (a Kubernetes quantity: 1, 500m, ...)")
    cpu_limit: str = Field("2", description="CPU limit per pod")
    memory_request: str = Field("2Gi", description="memory request per pod (a quantity: 512Mi, 4Gi, ...)")
    memory_limit: str = Field("4Gi", description="memory limit per pod")
    tmp_size_limit: str = Field("1Gi", description="size limit of each pod's /tmp (an emptyDir: HOME, the Numba "
                                "and Matplotlib caches; the root filesystem is read-only)")
    gpus: int = Field(0, ge=0, le=64, description="nvidia.com/gpu per pod (request = limit); needs the NVIDIA device "
                      "plugin and a CUDA image")
    run_as_user: int = Field(1000, ge=1, le=2 ** 31 - 1, description="UID of the pods (non-root; the image's user is 1000)")
    run_as_group: int = Field(1000, ge=1, le=2 ** 31 - 1, description="GID of the pods, also their fsGroup")
    image_pull_secret: str | None = Field(None, description="secret for a private registry")
    node_selector: dict[str, str] = Field(default_factory=dict, description="node labels the pods must match")
    interchange_address: str | None = Field(None, pattern=r"^[A-Za-z0-9.:_-]+$", description=f"address the pods reach the driver at; default: "
                                            f"${ADDRESS_ENV} (the chart sets it to the driver pod's IP), else "
                                            "this host's address")
    worker_port: int | None = Field(None, ge=1024, le=65535, description="the port the driver's interchange "
                                    "takes worker connections on (the chart's NetworkPolicy opens only this one); "
                                    "default: one Parsl picks in 54000-55000")
    pod_name: str = Field("spibatch-worker", description="pod name prefix (Parsl appends .<job id>)")
    worker_init: str = Field("", description="shell lines run in each pod before the workers start")
    strategy_period_s: float = Field(5.0, ge=0.05, le=3600, description="how often Parsl looks at the queue (s)")
    max_idletime_s: float = Field(60.0, gt=0, le=1e6, description="an idle pod is deleted after this many seconds")

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



def _parsl_provider_class():
    from parsl.providers import KubernetesProvider as ParslKubernetesProvider

    _enable_parsl_kubernetes()

    class SpibatchKubernetesProvider(ParslKubernetesProvider):
        """Parsl's KubernetesProvider whose pods are :func:`worker_pod` (pod security, shared PVC, /tmp)."""

        def __init__(self, site, run_dir: Path, **kwargs):
            super().__init__(**kwargs)
            self.site, self.run_dir = site, Path(run_dir)

        def _create_pod(self, image, pod_name, job_id, port=80, cmd_string=None, volumes=(),
                        service_account_name=None, annotations=None):
            pod = worker_pod(self.site, self.run_dir, pod_name, job_id, cmd_string)
            self.kube_client.create_namespaced_pod(namespace=self.namespace, body=pod)

    return SpibatchKubernetesProvider


def _enable_parsl_kubernetes() -> None:
    """Parsl's Kubernetes module with the real client: a driver imports Parsl without it
    (:data:`spibatch.parsl_lean.DRIVER_HIDE`, 0.15 s of every run's start), so the Kubernetes site imports
    it here, where it is used, and gives it to Parsl's module (which found it missing, or a leftover)."""
    from parsl.providers.kubernetes import kube

    if not kube._kubernetes_enabled:
        try:
            from kubernetes import client, config
        except (ImportError, NameError, FileNotFoundError):   # as Parsl's own import of it
            return   # Parsl's own error says the module is missing (our checks said it before)
        kube.client, kube.config, kube._kubernetes_enabled = client, config, True


def _client():
    """The kubernetes client's modules (client, config, ApiException); Unreachable is raised by the caller."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    return client, config, ApiException


class KubernetesProvider(Provider):
    """A Kubernetes namespace: one worker pod per Parsl block; EMC in htc mode only."""

    name = "kubernetes"
    Options = KubernetesOptions
    gpu_key = "kubernetes.gpus"
    default_emc_mode = "htc"
    rendered_check = "the API server admits worker-pod.yaml (dryRun=All)"
    address_key = "kubernetes.interchange_address"

    def max_pods(self) -> int:
        """Pods at once: enough for the site's workers."""
        return max(1, math.ceil(self.site.workers / self.options.workers_per_pod))

    def node_cores(self) -> int:
        """CPUs one pod may use (its CPU limit, at least 1): the pipeline splits them among the pod's workers."""
        return max(1, int(parse_quantity(self.options.cpu_limit)))

    def ranks_per_node(self) -> int:
        """Workers sharing one pod."""
        return self.options.workers_per_pod

    def worker_init(self) -> str:
        """Shell lines a pod runs before the worker pool (the user's ``worker_init``)."""
        return self.options.worker_init.strip()

    def interchange_address(self) -> str:
        """Where pods reach the driver: the option, else $SPIBATCH_INTERCHANGE_ADDRESS, else this host."""
        if self.options.interchange_address:
            return self.options.interchange_address
        if os.environ.get(ADDRESS_ENV):
            return os.environ[ADDRESS_ENV]
        from parsl.addresses import address_by_hostname

        return address_by_hostname()

    def _parsl_provider(self, run_dir: Path):
        opts = self.options
        return _parsl_provider_class()(
            self.site, run_dir, image=self.site.container.image or "", namespace=opts.namespace, init_blocks=1,
            min_blocks=0, max_blocks=self.max_pods(), max_cpu=float(parse_quantity(opts.cpu_limit)),
            max_mem=opts.memory_limit, init_cpu=float(parse_quantity(opts.cpu_request)),
            init_mem=opts.memory_request, worker_init=self.worker_init(), pod_name=opts.pod_name,
            persistent_volumes=[(opts.pvc, opts.mount_path)], service_account_name=opts.service_account,
            run_as_non_root=True, user_id=str(opts.run_as_user), group_id=str(opts.run_as_group),
            secret=opts.image_pull_secret)

    def parsl_config(self, run_dir: Path):
        """One HTEX whose blocks are worker pods (KubernetesProvider); needs a kubeconfig or in-cluster access.
        Parsl's own launch command (the pod is the container; ``python3 -m spibatch.parsl_lean process_worker_pool.py``,
        see :func:`~spibatch.backends.parsl_common.lean_launch_cmd`), ``workers_per_pod`` workers each, encrypted."""
        parsl_lean.import_parsl()
        run_dir = Path(os.path.abspath(run_dir))
        executor = common.htex(self.site, self._parsl_provider(run_dir), run_dir,
                               address=self.interchange_address(), gpus=self.options.gpus,
                               workers=self.options.workers_per_pod, launch=common.lean_launch_cmd(["python3"]),
                               worker_port=self.options.worker_port)
        return common.config([executor], run_dir, strategy_period=self.options.strategy_period_s,
                             max_idletime=self.options.max_idletime_s)

    def render(self, run_dir: Path, command: list[str]) -> Rendered:
        """The worker pod the provider would create and the driver Job, as YAML.

        The pod's job id is shown as 00000000 and the interchange's ports and address as
        placeholders (Parsl knows them only once the interchange runs).
        """
        from parsl.providers.kubernetes.template import template_string
        from parsl.utils import sanitize_dns_subdomain_rfc1123

        run_dir = Path(os.path.abspath(run_dir))

        class _Shown:   # what format_launch reads of an executor (common.htex's settings)
            label, encrypted, cores_per_worker, launch_cmd = TASKS_LABEL, True, 1.0, common.lean_launch_cmd(["python3"])
            worker_logdir_root, worker_port = common.worker_logdir(run_dir), self.options.worker_port
            heartbeat_period, heartbeat_threshold = common.HEARTBEAT.values()

        launch = common.format_launch(_Shown, self.options.workers_per_pod, run_dir)
        cmd_string = template_string.format(command=launch, worker_init=self.worker_init())
        pod_name = f"{sanitize_dns_subdomain_rfc1123(self.options.pod_name)}.{RENDER_JOB_ID}"
        pod = worker_pod(self.site, run_dir, pod_name, RENDER_JOB_ID, cmd_string)
        return Rendered({"worker-pod.yaml": dump(pod), "driver-job.yaml": dump(driver_job(self.site, run_dir, command))})

    # ---------------------------------------------------------------- checks

    def check_site(self, run_dir: Path) -> None:
        """Image, runtime, mode, quantities, the run directory inside the PVC's mount path, and our checks of
        the worker pod; no cluster and no client needed."""
        opts, site = self.options, self.site
        if not site.container.image:
            raise self.fail("no image for the worker pods", "container.image",
                            "set container.image to the spibatch image in your registry (see containers/)")
        if site.container.runtime in ("apptainer", "charliecloud"):
            raise self.fail(f"Kubernetes runs OCI images, not {site.container.runtime}", "container.runtime",
                            "set container.runtime: docker and container.image to an image reference "
                            "(registry/name:tag)")
        if site.emc_mode != "htc":
            raise self.fail("EMC in hpc mode (one MPI job) is not supported on Kubernetes", "emc_mode",
                            "set emc_mode: htc (one task per shard per iteration), or run EMC in hpc mode on a "
                            "Slurm site")
        if opts.mount_path.rstrip("/") == "":
            raise self.fail("the PVC cannot be mounted over the pod's root", "kubernetes.mount_path",
                            "mount it at a folder of its own, e.g. /shared")
        for field in ("cpu_request", "cpu_limit", "memory_request", "memory_limit", "tmp_size_limit"):
            problem = quantity_problem(getattr(opts, field), positive=not field.endswith("_request"))
            if problem:
                raise self.fail(problem, f"kubernetes.{field}", "write a Kubernetes quantity, e.g. 500m or 2 "
                                "(CPU), 512Mi or 4Gi (memory)")
        run_text = run_dir_text(run_dir)
        mount = opts.mount_path.rstrip("/") or "/"
        if not (run_text == mount or run_text.startswith(mount.rstrip("/") + "/")):
            raise self.fail(f"the run directory {run_text} is not inside the PVC mount path {opts.mount_path}",
                            "kubernetes.mount_path", "put the run directory on the shared filesystem (`spibatch "
                            "run --out` a folder under mount_path, or output.runs_dir in the pipeline file), or "
                            "set mount_path to the shared filesystem's path")
        pod = yaml.safe_load(self.render(run_dir, ["spibatch"]).files["worker-pod.yaml"])
        found = problems(pod)
        if found:
            raise self.fail(f"the worker pod would be invalid: {found[0]}", "kubernetes", "fix the kubernetes section")

    def api(self):
        """The CoreV1Api of the configured cluster (kubeconfig, else in-cluster); Unreachable without the
        client or a cluster."""
        try:
            client, config, _ = _client()
        except ImportError:
            raise self.fail("the kubernetes client is not installed", "provider", "pip install 'spibatch[k8s]'",
                            unreachable=True) from None
        try:
            try:
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
            except config.config_exception.ConfigException:
                config.load_incluster_config()
        except config.config_exception.ConfigException:
            raise self.fail("no Kubernetes cluster configured (no kubeconfig, not inside a pod)", "provider",
                            "set KUBECONFIG or run where `kubectl get pods` works", unreachable=True) from None
        return client.CoreV1Api()

    def _read(self, field: str, read, missing: str, fix: str) -> list[str]:
        """Ask the API server for one object: [] when it exists (or we may not read it: 403), InputError on 404."""
        api = self.api()
        _, _, ApiException = _client()
        try:
            read(api)
        except ApiException as exc:
            if exc.status == 404:
                raise self.fail(missing, field, fix) from None
            if exc.status != 403:   # a namespaced service account may not read namespaces: the PVC check tells
                raise self.fail(f"the API server answered {exc.status} {exc.reason}", field,
                                "check the cluster") from None
        return []

    def cluster_checks(self, run_dir: Path) -> list[Check]:
        """The namespace and the PVC exist (asks the API server)."""
        ns, pvc = self.options.namespace, self.options.pvc
        return [
            Check(f"namespace {ns} exists", lambda: self._read(
                "kubernetes.namespace", lambda api: api.read_namespace(ns),
                f"namespace {ns} does not exist on the cluster",
                f"create it (kubectl create namespace {ns}) or name an existing one")),
            Check(f"PersistentVolumeClaim {pvc} exists in namespace {ns}", lambda: self._read(
                "kubernetes.pvc", lambda api: api.read_namespaced_persistent_volume_claim(pvc, ns),
                f"PersistentVolumeClaim {pvc} does not exist in namespace {ns}",
                "install the Helm chart (it creates the PVC) or name an existing claim")),
        ]

    def check_rendered(self, rendered: Rendered) -> list[str]:
        """Ask the API server to admit the dry run's worker pod without creating it (``dryRun=All``:
        schema, admission, pod security, quotas, RBAC).  One note; InputError when it refuses."""
        api = self.api()
        _, _, ApiException = _client()
        pod = yaml.safe_load(rendered.files["worker-pod.yaml"])
        try:
            api.create_namespaced_pod(self.options.namespace, pod, dry_run="All")
        except ApiException as exc:
            reason = " ".join(str(getattr(exc, "body", "") or exc.reason).split())[:300]
            raise self.fail(f"the API server refuses the worker pod ({exc.status}: {reason})", "kubernetes",
                            "see the reason; fix the kubernetes section or the namespace's policy") from None
        return [f"worker-pod.yaml: admitted by the API server (dry run, namespace {self.options.namespace}); "
                "nothing created"]
