"""An emulated Kubernetes cluster for the tests: kmock's API server plus a local pod runner.

``Cluster`` runs kmock's ``KubernetesEmulator`` (an in-memory Kubernetes API over HTTP on
127.0.0.1; pods created, read, listed, patched and deleted through the real ``kubernetes``
client) in a thread with its own event loop, and writes a kubeconfig for it.  kmock keeps
objects but runs nothing, and cannot serve ``GET /api/v1/namespaces/NAME`` (it reads the
path as a list), so existing namespaces are declared as fixed answers; and it stores objects
created with ``?dryRun=All``, so the emulator here answers those without storing them.

``PodRunner`` stands in for the kubelet: it polls the pod list, starts each new pod's
``command + args`` as a local process (its env, its workingDir), reports phase Running /
Succeeded / Failed through the status subresource, and kills the process when the pod is
deleted.  With a :class:`PodNetwork` (root and iproute2) each pod is a host of its own, as
on a cluster's pod network: a network namespace with an address on a bridge
(``status.podIP``; this machine, where the driver and its interchange run, is
:data:`HOST_ADDRESS` there), so a pod reaches the driver only at an address the site gives
it, never at 127.0.0.1 (its own loopback); without one every pod's address is 127.0.0.1.
Every persistentVolumeClaim mount path must exist on this machine: the local filesystem
plays the shared filesystem.  What a real kubelet does and this does not: pull images (the
"image" is this Python environment), enforce resources or the security context, DNS and
Services, NetworkPolicies.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml


def _emulator_class():
    """kmock's KubernetesEmulator that, like a real API server, stores nothing for ``?dryRun=All``."""
    import aiohttp.web
    import kmock

    class DryRunEmulator(kmock.KubernetesEmulator):
        async def _handle(self, request):
            if request.action == kmock.action.CREATE and request.params.get("dryRun") == "All":
                self.dry_runs.append(request.data)
                if self.refuse:      # what an admission controller would answer (set by a test)
                    return aiohttp.web.json_response(
                        {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 403,
                         "reason": "Forbidden", "message": self.refuse}, status=403)
                return aiohttp.web.json_response(request.data, status=201)
            return await super()._handle(request)

    return DryRunEmulator


class Cluster:
    """kmock's Kubernetes emulator on 127.0.0.1 with the given namespaces and PVCs ({ns: [claim, ...]})."""

    def __init__(self, namespaces: dict[str, list[str]]):
        self.namespaces = namespaces
        self.url = ""
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        import kmock

        async with _emulator_class()() as km, kmock.Server(km) as server:
            km.dry_runs, km.refuse = [], None
            km.resources["v1/pods"] = {}
            for namespace, claims in self.namespaces.items():
                km[f"get /api/v1/namespaces/{namespace}"] << {
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace},
                    "status": {"phase": "Active"}}
                for claim in claims:
                    km.objects[kmock.resource("", "v1", "persistentvolumeclaims"), namespace, claim] = {
                        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": claim, "namespace": namespace},
                        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
                        "status": {"phase": "Bound"}}
            self.url = str(server.url).rstrip("/")
            self.kmock = km
            self._ready.set()
            while not self._stop.is_set():
                await asyncio.sleep(0.05)

    def __enter__(self) -> "Cluster":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("kmock did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig whose current context is this emulator."""
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "kmock",
                  "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
                  "users": [{"name": "kmock", "user": {"token": "emulated"}}],
                  "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock",
                                                             "namespace": namespace}}]}
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    def api(self):
        """A CoreV1Api talking to this emulator (independent of the global kubernetes config)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.CoreV1Api(client.ApiClient(configuration))


NET = "10.213.78"                 # the pod network's /24: this machine .1, pods from .2
HOST_ADDRESS = f"{NET}.1"
BRIDGE = "spibatch-pods"


class PodNetwork:
    """A pod network: a bridge with this machine at :data:`HOST_ADDRESS`, and for each pod a network namespace
    with an address of its own on it (:meth:`add`), removed with the pod (:meth:`remove`) or at exit."""

    def __init__(self):
        self.pods: dict[str, tuple[str, str]] = {}     # pod name -> (namespace, address)

    @staticmethod
    def available() -> str | None:
        """None where pod networks can be made here, else why not."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        if not shutil.which("ip") or not shutil.which("nsenter") or not shutil.which("unshare"):
            return "needs iproute2's ip and util-linux's nsenter (apt-get install iproute2; .ci/run does)"
        if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
            return "this machine refuses new network namespaces (a container without CAP_SYS_ADMIN?)"
        return None

    def __enter__(self) -> "PodNetwork":
        left = "".join(subprocess.run(["ip", *args], capture_output=True, text=True).stdout
                       for args in (["netns", "list"], ["-o", "link"]))
        for netns in sorted(set(re.findall(r"spibatch-pod[0-9]+", left))):     # what a killed run left
            self._delete(netns)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        for args in (["link", "add", BRIDGE, "type", "bridge"], ["addr", "add", f"{HOST_ADDRESS}/24", "dev", BRIDGE],
                     ["link", "set", BRIDGE, "up"]):
            subprocess.run(["ip", *args], check=True, capture_output=True)
        return self

    def __exit__(self, *exc) -> None:
        for name in list(self.pods):
            self.remove(name)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)

    def add(self, name: str) -> tuple[str, list[str]]:
        """The pod's address, and the prefix that runs a command in its network namespace."""
        used = {int(address.rsplit(".", 1)[1]) for _, address in self.pods.values()}
        free = set(range(2, 255)) - used                     # addresses are reused once their pod is gone
        if not free:
            raise OSError(f"the pod network {NET}.0/24 is full ({len(used)} pods)")
        index = min(free)
        netns, address = f"spibatch-pod{index}", f"{NET}.{index}"
        self._delete(netns)
        self.pods[name] = (netns, address)                   # before it exists: remove() cleans a half-made one
        for args in (["netns", "add", netns], ["link", "add", netns, "type", "veth", "peer", "name", "eth0", "netns",
                                                netns],
                     ["link", "set", netns, "master", BRIDGE, "up"], ["-n", netns, "addr", "add", f"{address}/24", "dev",
                                                                      "eth0"],
                     ["-n", netns, "link", "set", "lo", "up"], ["-n", netns, "link", "set", "eth0", "up"]):
            subprocess.run(["ip", *args], check=True, capture_output=True)
        return address, ["nsenter", f"--net=/run/netns/{netns}"]

    def remove(self, name: str) -> None:
        netns, _ = self.pods.pop(name, (None, None))
        if netns:
            self._delete(netns)

    @staticmethod
    def _delete(netns: str) -> None:
        """The namespace's processes killed, its veth deleted (both ends: the host end would outlive a namespace
        whose last process is still exiting, and block the name), the namespace's name removed."""
        if Path("/run/netns", netns).exists():
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        subprocess.run(["ip", "link", "del", netns], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


class PodRunner:
    """Runs every pod created in ``namespace`` as local processes until the pod is deleted (each in a network
    namespace of its own with ``network``)."""

    def __init__(self, cluster: Cluster, namespace: str, base_env: dict[str, str], poll_s: float = 0.2,
                 network: PodNetwork | None = None):
        self.api = cluster.api()
        self.namespace, self.base_env, self.poll_s, self.network = namespace, base_env, poll_s, network
        self.addresses: dict[str, str] = {}  # pod name -> its address (status.podIP)
        self.processes: dict[str, subprocess.Popen] = {}
        self.started: list[dict] = []        # every pod manifest started, as the API returned it
        self.deleted: list[str] = []         # names of pods whose process was killed on deletion
        self.errors: list[str] = []
        self.most_at_once = 0                # the most pod processes alive at the same time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "PodRunner":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        for process in self.processes.values():
            self._kill(process)

    @staticmethod
    def _kill(process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def _env(self, container: dict, address: str) -> dict[str, str]:
        env = dict(self.base_env)
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
            elif (item.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
                env[item["name"]] = address
        return env

    def _start(self, pod: dict) -> None:
        name = pod["metadata"]["name"]
        spec = pod["spec"]
        container = spec["containers"][0]
        claims = {v["name"] for v in spec.get("volumes") or [] if v.get("persistentVolumeClaim")}
        for mount in container.get("volumeMounts") or []:
            if mount["name"] in claims and not Path(mount["mountPath"]).is_dir():
                self.errors.append(f"{name}: shared mount {mount['mountPath']} does not exist here")
                self._phase(name, "Failed")
                return
        log = Path(container.get("workingDir") or "/tmp") / f"pod-{name}.log"
        try:
            address, prefix = self.network.add(name) if self.network else ("127.0.0.1", [])
            self.addresses[name] = address
            with open(log, "ab") as out:   # nsenter execs the command: the process is the pod's, as without it
                process = subprocess.Popen(prefix + list(container.get("command") or []) +
                                           list(container.get("args") or []), env=self._env(container, address),
                                           cwd=container.get("workingDir") or None, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        except Exception as exc:  # noqa: BLE001 - said by the test, not lost with the kubelet's thread
            self.errors.append(f"{name}: could not start: {exc!r}")
            self.addresses.pop(name, None)
            if self.network:
                self.network.remove(name)
            self._phase(name, "Failed")
            return
        self.processes[name] = process
        self.started.append(pod)
        self._phase(name, "Running")

    def _phase(self, name: str, phase: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.patch_namespaced_pod_status(name, self.namespace, {"status": {
                "phase": phase, "podIP": self.addresses.get(name, "127.0.0.1")}})
        except ApiException as exc:   # deleted meanwhile
            if exc.status != 404:
                self.errors.append(f"{name}: status patch answered {exc.status}")

    def _loop(self) -> None:
        from kubernetes import client

        serialize = client.ApiClient().sanitize_for_serialization
        finished: set[str] = set()
        while not self._stop.is_set():
            try:
                pods = {p.metadata.name: serialize(p) for p in self.api.list_namespaced_pod(self.namespace).items}
            except Exception as exc:  # noqa: BLE001 - keep the kubelet alive, report at the end
                self.errors.append(f"list pods: {exc!r}")
                time.sleep(self.poll_s)
                continue
            for name, pod in pods.items():
                if name not in self.processes and name not in finished:
                    self._start(pod)
                    if name not in self.processes:
                        finished.add(name)
            for name, process in list(self.processes.items()):
                if name not in pods:                      # deleted: stop its containers, free its address
                    self._kill(process)
                    del self.processes[name]
                    if self.network:
                        self.network.remove(name)
                    self.deleted.append(name)
                    finished.add(name)
                elif process.poll() is not None and name not in finished:
                    self._phase(name, "Succeeded" if process.returncode == 0 else "Failed")
                    finished.add(name)
            alive = sum(process.poll() is None for process in self.processes.values())
            self.most_at_once = max(self.most_at_once, alive)
            time.sleep(self.poll_s)


def host_env(extra_path: str | None = None) -> dict[str, str]:
    """The environment a pod starts from here: PATH with this Python's bin/ first (the "image")."""
    path = os.pathsep.join(p for p in (str(Path(sys.executable).parent), extra_path, os.environ.get("PATH", "")) if p)
    return {"PATH": path, "LANG": os.environ.get("LANG", "C.UTF-8")}
