"""Our own checks of Kubernetes manifests, beyond the OpenAPI schema.

``problems(obj)`` -> a list of one-line problems (empty: fine) for one object
(a dict as ``kubectl apply`` reads it): names that are not DNS-1123, resource
quantities that :func:`parse_quantity` refuses, a request above
its limit, a volumeMount naming no volume, a volume mounted nowhere, and the
fields of the "restricted" Pod Security Standard (non-root, no privilege
escalation, all capabilities dropped, seccomp RuntimeDefault, read-only root
filesystem with something writable at /tmp).  Used by the dry run and
preflight (:mod:`spibatch.backends.kubernetes`) and by the tests on every
object the Helm chart renders.  Needs no ``kubernetes`` client: :func:`parse_quantity`
is the client's ``kubernetes.utils.parse_quantity`` (Apache-2.0), which the tests
compare it with.
"""

from __future__ import annotations

import re
from decimal import Decimal, DecimalException, InvalidOperation
from typing import Any

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")          # <= 63 characters
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")  # <= 253
LABEL_NAMED = {"Service", "Namespace", "ServiceAccount"}   # kinds whose names must be DNS-1123 labels
WORKLOADS = {"Job": ("spec", "template", "spec"), "Deployment": ("spec", "template", "spec"),
             "StatefulSet": ("spec", "template", "spec"), "DaemonSet": ("spec", "template", "spec"),
             "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"), "Pod": ("spec",)}


def is_label(name: str) -> bool:
    """A DNS-1123 label: lower-case alphanumerics and '-', at most 63 characters."""
    return isinstance(name, str) and len(name) <= 63 and bool(DNS1123_LABEL.match(name))


def is_subdomain(name: str) -> bool:
    """A DNS-1123 subdomain: dot-separated labels, at most 253 characters."""
    return isinstance(name, str) and len(name) <= 253 and bool(DNS1123_SUBDOMAIN.match(name))


QUANTITY_EXPONENTS = {"n": -3, "u": -2, "m": -1, "K": 1, "k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
BINARY_PREFIXES = "KMGTPE"


def parse_quantity(quantity: Any) -> Decimal:
    """A Kubernetes quantity (``500m``, ``2``, ``4Gi``, ``1e3``) as a Decimal (cores, bytes, ...).

    Suffixes: binary Ki Mi Gi Ti Pi Ei (powers of 1024), decimal n u m k M G T P E (powers of 1000).
    ValueError for anything else, as ``kubernetes.utils.parse_quantity``.
    """
    if isinstance(quantity, (int, float, Decimal)):
        return Decimal(quantity)
    text = str(quantity)
    number, suffix = text, ""
    if len(text) >= 2 and text[-1] == "i" and text[-2] in QUANTITY_EXPONENTS:
        number, suffix = text[:-2], text[-2:]
    elif text[-1:] in QUANTITY_EXPONENTS:
        number, suffix = text[:-1], text[-1:]
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"Invalid number format: {number}") from None
    if not suffix:
        return value
    if suffix.endswith("i") and suffix[0] not in BINARY_PREFIXES:
        raise ValueError(f"{text} has unknown suffix")
    base = 1024 if suffix.endswith("i") else 1000
    try:
        return value * (base ** Decimal(QUANTITY_EXPONENTS[suffix[0]]))
    except DecimalException as exc:
        raise ValueError(f"Invalid quantity: {text}") from exc


def quantity_problem(value: Any, positive: bool = False) -> str | None:
    """Why ``value`` is not a Kubernetes quantity (None when :func:`parse_quantity` takes it): never negative;
    with ``positive`` above 0 too (a pod's limits and size limits; its requests may be 0)."""
    try:
        amount = parse_quantity(value)
    except (ValueError, TypeError, ArithmeticError) as exc:
        return f"{value!r} is not a quantity ({exc})"
    if amount < 0 or (positive and not amount > 0):
        return f"{value!r} is not above 0" if positive else f"{value!r} is negative"
    return None


def pod_spec(obj: dict) -> dict | None:
    """The pod spec inside a Pod, Job, Deployment, ... (None for other kinds)."""
    path = WORKLOADS.get(obj.get("kind", ""))
    if path is None:
        return None
    spec: Any = obj
    for key in path:
        spec = (spec or {}).get(key)
    return spec or {}


def _resources(where: str, resources: dict) -> list[str]:
    out = []
    for part in ("requests", "limits"):
        for key, value in (resources.get(part) or {}).items():
            problem = quantity_problem(value)
            if problem:
                out.append(f"{where}.resources.{part}.{key}: {problem}")
    for key, request in (resources.get("requests") or {}).items():
        limit = (resources.get("limits") or {}).get(key)
        if limit is not None and not quantity_problem(request) and not quantity_problem(limit):
            if parse_quantity(request) > parse_quantity(limit):
                out.append(f"{where}.resources: request {key}={request} is above its limit {limit}")
    return out


def _restricted(where: str, spec: dict, container: dict) -> list[str]:
    pod_sc = spec.get("securityContext") or {}
    sc = container.get("securityContext") or {}
    out = []
    if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
        out.append(f"{where}: runAsNonRoot is not true (restricted pod security)")
    if (sc.get("runAsUser", pod_sc.get("runAsUser")) == 0):
        out.append(f"{where}: runAsUser is 0 (restricted pod security)")
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append(f"{where}: allowPrivilegeEscalation is not false (restricted pod security)")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        out.append(f"{where}: capabilities.drop lacks ALL (restricted pod security)")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        out.append(f"{where}: seccompProfile.type is {seccomp}, not RuntimeDefault (restricted pod security)")
    if sc.get("readOnlyRootFilesystem") is not True:
        out.append(f"{where}: readOnlyRootFilesystem is not true")
    elif not any(m.get("mountPath") == "/tmp" for m in container.get("volumeMounts") or []):
        out.append(f"{where}: read-only root filesystem but nothing writable mounted at /tmp")
    return out


def pod_problems(where: str, spec: dict) -> list[str]:
    """Problems of one pod spec: names, quantities, volume cross-references, pod security."""
    out = []
    volumes = {v.get("name") for v in spec.get("volumes") or []}
    mounted: set[str] = set()
    containers = list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
    if not spec.get("containers"):
        out.append(f"{where}: no containers")
    for container in containers:
        name = container.get("name", "")
        cwhere = f"{where}.containers[{name}]"
        if not is_label(name):
            out.append(f"{cwhere}: container name {name!r} is not a DNS-1123 label")
        if not container.get("image"):
            out.append(f"{cwhere}: no image")
        out += _resources(cwhere, container.get("resources") or {})
        for mount in container.get("volumeMounts") or []:
            mounted.add(mount.get("name"))
            if mount.get("name") not in volumes:
                out.append(f"{cwhere}: volumeMount {mount.get('name')!r} names no volume of the pod")
            if not str(mount.get("mountPath", "")).startswith("/"):
                out.append(f"{cwhere}: mountPath {mount.get('mountPath')!r} is not absolute")
        out += _restricted(cwhere, spec, container)
    for volume in sorted(v for v in volumes - mounted if v):
        out.append(f"{where}: volume {volume!r} is mounted by no container")
    for volume in spec.get("volumes") or []:
        if not is_label(volume.get("name", "")):
            out.append(f"{where}: volume name {volume.get('name')!r} is not a DNS-1123 label")
    return out


def problems(obj: dict) -> list[str]:
    """Every problem we find in one manifest object (empty list: none)."""
    kind = obj.get("kind", "?")
    name = (obj.get("metadata") or {}).get("name", "")
    where = f"{kind}/{name}"
    out = []
    ok = is_label(name) if kind in LABEL_NAMED else is_subdomain(name)
    if not ok:
        out.append(f"{where}: name {name!r} is not a DNS-1123 {'label' if kind in LABEL_NAMED else 'subdomain'}")
    for key, value in ((obj.get("metadata") or {}).get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63:
            out.append(f"{where}: label {key}={value!r} is not a string of at most 63 characters")
    spec = pod_spec(obj)
    if spec is not None:
        out += pod_problems(where, spec)
    if kind == "PersistentVolumeClaim":
        storage = ((obj.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage")
        problem = quantity_problem(storage)
        if problem:
            out.append(f"{where}.spec.resources.requests.storage: {problem}")
    return out
