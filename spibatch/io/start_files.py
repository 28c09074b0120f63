"""One phasing start's result as a file (``phase/starts/start_NNN.npz``), written by a worker, read by the merge.

A numpy ``.npz`` archive (uncompressed) read with ``allow_pickle=False``: the arrays ``density`` (N, N, N) float32
or complex64, ``support`` (N, N, N) bool and ``errors`` (iterations,) float64, and ``meta``, the other fields of
:class:`~spibatch.phasing.starts.StartResult` as UTF-8 JSON bytes.  Nothing in it is executed when it is read
(a pickle would run whatever code a changed file held, in the process that merges or resumes the run).
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from spibatch.io.atomic import write_bytes

ARRAYS = ("density", "support", "errors")


def write_start(path: str | Path, result) -> Path:
    """Write ``result`` (a StartResult) to ``path`` atomically; returns the path."""
    meta = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name not in ARRAYS}
    meta["support_sizes"] = [list(map(int, pair)) for pair in meta["support_sizes"]]
    buffer = io.BytesIO()
    np.savez(buffer, density=np.asarray(result.density), support=np.asarray(result.support, bool),
             errors=np.asarray(result.errors, np.float64),
             meta=np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8))
    return write_bytes(path, buffer.getvalue())


def read_start(path: str | Path):
    """The StartResult in ``path``; ValueError naming the file when it is not one."""
    from spibatch.phasing.starts import StartResult

    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in ARRAYS}
            meta = json.loads(archive["meta"].tobytes().decode("utf-8"))
        meta["support_sizes"] = [tuple(pair) for pair in meta["support_sizes"]]
        return StartResult(**arrays, **meta)
    except (OSError, KeyError, ValueError, RecursionError, TypeError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a phasing start file ({exc.__class__.__name__}: {exc})") from None
