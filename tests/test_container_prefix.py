"""The exact container prefix lines (spibatch.backends.containers) for the images containers/ builds:
every runtime, with and without GPUs, binds and options.  Snapshot: tests/snapshots/container-prefixes.txt
(SPIBATCH_UPDATE_SNAPSHOTS=1 rewrites it)."""

import os
from pathlib import Path

from spibatch.backends import Container
from spibatch.backends.containers import prefix, prefix_text

SNAPSHOT = Path(__file__).parent / "snapshots" / "container-prefixes.txt"
RUN_DIR = "/shared/runs/demo-20260101T000000Z"
CASES = {
    "none": Container(runtime="none"),
    "apptainer": Container(runtime="apptainer", image="/shared/images/spibatch.sif"),
    "apptainer-gpu-binds": Container(runtime="apptainer", image="/shared/images/spibatch.sif", gpu=True,
                                     binds=["/data", "/scratch/in:/in"], options=["--cleanenv"]),
    "apptainer-oras": Container(runtime="apptainer", image="oras://registry.example.org/spi/spibatch:0.1.0"),
    "docker": Container(runtime="docker", image="registry.example.org/spi/spibatch:0.1.0"),
    "docker-gpu-binds": Container(runtime="docker", image="registry.example.org/spi/spibatch:0.1.0", gpu=True,
                                  binds=["/data"]),
    "charliecloud": Container(runtime="charliecloud", image="/shared/images/spibatch", binds=["/data"]),
}


def lines() -> str:
    return "".join(f"{name}: {prefix_text(c, [RUN_DIR], workdir=RUN_DIR)}spibatch emc emc.yaml\n"
                   for name, c in CASES.items())


def test_prefix_lines_match_the_snapshot():
    text = lines()
    if os.environ.get("SPIBATCH_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(text)
    assert text == SNAPSHOT.read_text()


def test_run_directory_is_bound_at_its_own_path_once():
    words = prefix(CASES["apptainer-gpu-binds"], [RUN_DIR, RUN_DIR])
    assert words[:3] == ["apptainer", "exec", "--nv"]
    assert words.count(f"{RUN_DIR}:{RUN_DIR}") == 1
    assert words[-2:] == ["--cleanenv", "/shared/images/spibatch.sif"]
    assert prefix(CASES["none"], [RUN_DIR]) == []
