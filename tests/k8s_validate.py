"""Validation of Kubernetes manifests for the tests: the OpenAPI schema (kubernetes-validate --strict,
the cluster version below) plus our own checks (spibatch.backends.k8s_checks)."""

import yaml

KUBE_VERSION = "1.33.0"   # a version every supported cluster serves these objects in


def objects(text: str) -> list[dict]:
    """The objects of one YAML stream (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def validate(obj: dict) -> list[str]:
    """Schema errors and our own problems of one object (empty: valid)."""
    import kubernetes_validate

    from spibatch.backends.k8s_checks import problems

    found = []
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        found.append(f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}: schema: {exc.message}")
    return found + problems(obj)
