"""Phasing start files (``phase/starts/start_NNN.npz``): what a worker writes is what the merge reads, and
reading one never runs code from it (it was a pickle); the same for the FFTW wisdom cache."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from spibatch.io.start_files import read_start, write_start
from spibatch.phasing.starts import StartResult


def result(dtype) -> StartResult:
    rng = np.random.default_rng(3)
    density = rng.normal(size=(6, 6, 6)).astype(dtype)
    if np.iscomplexobj(density):
        density = density + 1j * rng.normal(size=(6, 6, 6)).astype(np.float32)
    return StartResult(seed=7, density=density, support=density.real > 0, errors=np.array([0.5, 0.25, 0.125]),
                       algorithms=["RAAR", "RAAR", "ER"], final_error=0.125, seconds=1.5,
                       support_sizes=[(0, 100), (20, 90)], fft_backend="scipy", free_error=None,
                       failure="auto: the support of start 7 collapsed")


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_a_start_comes_back_as_it_was_written(dtype, tmp_path):
    written = result(dtype)
    read = read_start(write_start(tmp_path / "start_000.npz", written))
    assert read.density.dtype == written.density.dtype and np.array_equal(read.density, written.density)
    assert read.support.dtype == bool and np.array_equal(read.support, written.support)
    assert np.array_equal(read.errors, written.errors)
    assert (read.seed, read.algorithms, read.final_error, read.seconds, read.support_sizes, read.fft_backend,
            read.free_error, read.failure) == (7, ["RAAR", "RAAR", "ER"], 0.125, 1.5, [(0, 100), (20, 90)],
                                                "scipy", None, "auto: the support of start 7 collapsed")


class Payload:
    """Unpickling this creates a file: what a changed start file could have done to whoever merged it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("form", ["pickle", "npz with an object array"])
def test_a_start_file_holding_code_is_refused_and_not_run(form, tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "start_000.npz"
    if form == "pickle":
        path.write_bytes(pickle.dumps(Payload(str(marker))))
    else:
        np.savez(path, density=np.array([Payload(str(marker))], dtype=object), support=np.ones(1, bool),
                 errors=np.ones(1), meta=np.frombuffer(b"{}", np.uint8))
        assert not marker.exists()          # writing it did not run it either
    with pytest.raises(ValueError, match="not a phasing start file"):
        read_start(path)
    assert not marker.exists() and not os.path.exists(marker)


def test_fftw_wisdom_is_kept_without_pickle_and_a_foreign_file_is_planned_over(tmp_path, monkeypatch):
    """The FFTW wisdom cache (``~/.cache/spibatch/fftw-wisdom-*.json``) is read without running anything: the
    wisdom a 'measure' plan exported comes back byte for byte, and a pickle where it should be is ignored (the
    engine plans afresh, the payload never runs)."""
    pyfftw = pytest.importorskip("pyfftw")
    from spibatch.phasing import fft

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fft.FFTEngine(16, threads=1, backend="fftw", planning="measure")
    path = fft._wisdom_path(1)
    assert path.exists() and fft._read_wisdom(path) == pyfftw.export_wisdom()
    marker = tmp_path / "payload-ran"
    path.write_bytes(pickle.dumps(Payload(str(marker))))
    engine = fft.FFTEngine(16, threads=1, backend="fftw", planning="measure")
    assert not marker.exists() and engine.forward(engine.x).shape == (1, 16, 16, 9)
    assert fft._read_wisdom(path) == pyfftw.export_wisdom()      # written anew, in the safe form
