"""The Kubernetes manifests of a site: the worker pod (Parsl's pod plus the "restricted" Pod
Security Standard, the shared PVC and a /tmp emptyDir) and the driver Job.

The provider's ``_create_pod`` (:mod:`spibatch.backends.kubernetes`) and the dry run both call
:func:`worker_pod`, so the dry run shows the very pod that would be created.  Needs neither
Parsl nor the ``kubernetes`` client.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import yaml

ADDRESS_ENV = "SPIBATCH_INTERCHANGE_ADDRESS"   # set by the chart's Job from the downward API (status.podIP)
RENDER_JOB_ID = "00000000"                      # the dry run's job id (Parsl draws 8 random hex digits)
APP_LABELS = {"app.kubernetes.io/name": "spibatch", "app.kubernetes.io/component": "worker"}


def run_dir_text(run_dir: Path) -> str:
    """The run directory as the pods see it: absolute, POSIX."""
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
           {"name": "SPIBATCH_RUN_DIR", "value": run_dir_text(run_dir)}]
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
            "workingDir": run_dir_text(run_dir),
            "env": env,
            "resources": {"requests": requests, "limits": limits},
            "volumeMounts": [{"name": "shared", "mountPath": opts.mount_path},
                             {"name": "tmp", "mountPath": "/tmp"}],
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        }],
        "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": opts.pvc}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": opts.tmp_size_limit}}],
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


def dump(obj: dict) -> str:
    """One manifest as YAML (keys in the order built)."""
    return yaml.safe_dump(obj, sort_keys=False, width=1000)
