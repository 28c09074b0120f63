"""The CUDA sources compile for the H100 (sm_90) and define the kernels the launchers will ask for.

Running them needs a GPU (the GPU issue's device tests); compiling needs only nvcc.
"""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources

import pytest

KERNELS = {
    "emc.cu": ["log_views", "views", "photon_log_likelihood", "normalize_probabilities", "weighted_photons",
               "merge_views", "photon_log_likelihood_bg", "weighted_photons_bg", "particle_photons"],
    "phasing.cu": ["modulus_project", "update_real", "project_support", "multiply_separable", "threshold_support"],
}


def test_sources_ship_with_the_package():
    folder = resources.files("spibatch") / "kernels" / "cuda"
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".cu")) == sorted(KERNELS)


@pytest.mark.parametrize("source", sorted(KERNELS))
def test_source_compiles_for_sm90_with_its_kernels(source, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: the CUDA sources are compiled where the CUDA toolkit is installed")
    path = resources.files("spibatch") / "kernels" / "cuda" / source
    ptx = tmp_path / (source + ".ptx")
    done = subprocess.run([nvcc, "-arch=sm_90", "--ptx", "-Werror", "all-warnings", "-o", str(ptx), str(path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = ptx.read_text()
    for name in KERNELS[source]:
        assert f".entry {name}(" in text, f"{name} missing from {source}"
