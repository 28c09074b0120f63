"""The GPU launchers' argument handling, without a GPU.

A recording runtime stands in for CuPy/PyCUDA: every launch is checked against the
kernel's C signature parsed from the .cu source (the number of arguments, each one's
C type against the NumPy dtype passed), and the grid against the sizes.  Running the
kernels needs the GPU issue's device.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from spibatch.kernels.cuda_launch import BLOCK, Launcher, source
from spibatch.kernels.emc_gpu import EMCKernels
from spibatch.kernels.phasing_gpu import PhasingKernels

C_TYPES = {  # C parameter type -> (is a pointer, NumPy dtype)
    "float*": (True, np.float32), "double*": (True, np.float64), "float2*": (True, np.complex64),
    "bool*": (True, np.bool_), "int*": (True, np.int32), "longlong*": (True, np.int64),
    "unsignedlonglong*": (True, np.uint64),
    "float": (False, np.float32), "double": (False, np.float64), "int": (False, np.int32),
    "longlong": (False, np.int64),
}


def signatures(name: str) -> dict[str, list[tuple[bool, np.dtype]]]:
    out = {}
    for kernel, params in re.findall(r"__global__ void (\w+)\(([^)]*)\)", source(name)):
        types = []
        for param in params.split(","):
            words = param.replace("const", "").split()
            c_type = "".join(words[:-1]) + ("*" if words[-1].startswith("*") else "")
            types.append(C_TYPES[c_type.replace("*", "") + ("*" if "*" in c_type else "")])
        out[kernel] = types
    return out


class Recorder:
    def __init__(self, source_name: str):
        self.signatures = signatures(source_name)
        self.calls = []

    def launch(self, name, grid, block, args):
        expected = self.signatures[name]
        assert len(args) == len(expected), f"{name}: {len(args)} arguments, the kernel takes {len(expected)}"
        for i, (arg, (pointer, dtype)) in enumerate(zip(args, expected)):
            if pointer:
                assert isinstance(arg, np.ndarray) and arg.dtype == dtype, f"{name} argument {i}: {type(arg)}"
            else:
                assert isinstance(arg, np.generic) and arg.dtype == dtype, f"{name} argument {i}: {arg!r}"
        assert block[0] % 32 == 0
        self.calls.append((name, grid, block))


def test_every_kernel_in_the_sources_has_a_parsed_signature():
    assert set(signatures("phasing.cu")) == {"modulus_project", "update_real", "project_support",
                                             "multiply_separable", "threshold_support"}
    assert set(signatures("emc.cu")) == {"log_views", "views", "photon_log_likelihood", "normalize_probabilities",
                                         "weighted_photons", "merge_views", "photon_log_likelihood_bg",
                                         "weighted_photons_bg", "particle_photons"}


def test_phasing_wrappers_pass_the_c_types():
    rec = Recorder("phasing.cu")
    k = PhasingKernels(runtime=rec, xp=np)
    n = 16
    spectrum = np.zeros((n, n, n // 2 + 1), np.complex64)
    amp = np.zeros(spectrum.shape, np.float32)
    x, y = np.zeros((n,) * 3, np.float32), np.zeros((n,) * 3, np.float32)
    support = np.ones((n,) * 3, bool)
    assert k.modulus_project(spectrum, amp, 1.0, n, True) == (0.0, 0.0)
    for algorithm in ("ER", "HIO", "RAAR"):
        k.update(algorithm, x, y, support, True, 0.9)
    k.project_support(x, support, True, y)
    g = np.ones(n, np.float32)
    k.multiply_separable(spectrum, spectrum.copy(), g, g, np.ones(n // 2 + 1, np.float32))
    assert k.threshold_support(x, 0.5, support) == 0
    names = [c[0] for c in rec.calls]
    assert names == ["modulus_project", "update_real", "update_real", "update_real", "project_support",
                     "multiply_separable", "threshold_support"]
    assert rec.calls[0][1] == ((spectrum.size + BLOCK - 1) // BLOCK, 1, 1)


def test_emc_wrappers_pass_the_c_types_and_grids():
    rec = Recorder("emc.cu")
    k = EMCKernels(runtime=rec, xp=np)
    m, nrot, npix, nframes, entries = 9, 300, 40, 7, 50
    model = np.zeros((m,) * 3, np.float32)
    rot = np.tile(np.eye(3, dtype=np.float32), (nrot, 1, 1))
    q = np.zeros((npix, 3), np.float32)
    logv = np.zeros((npix, nrot), np.float32)
    mode = np.zeros(nrot, np.int32)
    k.log_views(model, rot, mode, q, np.ones(npix, np.float32), 1e-30, logv, np.zeros(nrot))
    ptr = np.linspace(0, entries, nframes + 1).astype(np.int64)
    like = np.zeros((nframes, nrot), np.float32)
    k.photon_log_likelihood(logv, ptr, ptr[1:].copy(), np.zeros(entries, np.int32), np.ones(entries, np.float32),
                            np.zeros(nrot), np.ones(nframes), np.zeros(nrot), like)
    k.normalize_probabilities(like, np.ones(nframes), 14.0, 1e-6, like.copy(), np.zeros(nframes), np.zeros(nframes))
    k.weighted_photons(like, np.zeros(npix + 1, np.int64), np.zeros(entries, np.int32), np.ones(entries, np.float32),
                       logv)
    k.merge_views(np.zeros((m, m, m, 2), np.float32), rot, mode, q, logv, np.ones(nrot, np.float32))
    grids = {name: grid for name, grid, _ in rec.calls}
    assert grids["log_views"] == (2, npix, 1)                       # rotations along x, pixels along y
    assert grids["photon_log_likelihood"] == (2, nframes, 1)
    assert grids["normalize_probabilities"] == (nframes, 1, 1)      # one block per frame


@pytest.mark.parametrize("call, words", [
    (lambda k, n: k.update("DM", *(np.zeros((n,) * 3, np.float32),) * 2, np.ones((n,) * 3, bool), True), "no GPU update"),
    (lambda k, n: k.project_support(np.zeros((n,) * 3), np.ones((n,) * 3, bool), True, np.zeros((n,) * 3)),
     "expected dtype float32"),
    (lambda k, n: k.project_support(np.zeros((n,) * 3, np.float32), np.ones((n, n, n + 1), bool), True,
                                    np.zeros((n,) * 3, np.float32)), "expected shape"),
    (lambda k, n: k.project_support(np.zeros((n,) * 3, np.float32).transpose(2, 1, 0)[::1, ::1, ::-1],
                                    np.ones((n,) * 3, bool), True, np.zeros((n,) * 3, np.float32)), "C-contiguous"),
])
def test_bad_arguments_are_refused_before_a_launch(call, words):
    rec = Recorder("phasing.cu")
    with pytest.raises(ValueError, match=words):
        call(PhasingKernels(runtime=rec, xp=np), 8)
    assert rec.calls == []


def test_grid_limits_are_checked():
    with pytest.raises(ValueError, match="outside CUDA's limits"):
        Launcher("emc.cu", Recorder("emc.cu"))("log_views", (1, 70000), ())
    with pytest.raises(ValueError, match="unknown gpu_runtime"):
        Launcher("emc.cu", "opencl")
