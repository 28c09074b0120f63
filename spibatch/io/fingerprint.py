"""Fingerprints of input files: what provenance.json and an EMC checkpoint record of the files a run read.

A file up to :data:`FULL_HASH_LIMIT` bytes is hashed whole (SHA-256).  A larger one (a beamtime's CXI
file: hundreds of GB, which at ~1 GB/s would hold `spibatch run` on the login node for minutes, and
`resume` again) is recorded as ``size-and-ends:<bytes>:<sha256 of its first and last ENDS_BYTES>``: a
changed size, start or end is caught, a change only in its middle is not.
"""

from __future__ import annotations

import hashlib
import os

FULL_HASH_LIMIT = 2 << 30
ENDS_BYTES = 64 << 20


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def input_fingerprint(path: str | os.PathLike) -> str:
    """The SHA-256 of the file, or for a file above FULL_HASH_LIMIT bytes its size and the SHA-256 of its
    two ends (see the module docstring)."""
    size = os.path.getsize(path)
    if size <= FULL_HASH_LIMIT:
        return sha256_file(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for offset in (0, size - ENDS_BYTES):
            fh.seek(offset)
            remaining = ENDS_BYTES
            while remaining and (chunk := fh.read(min(1 << 20, remaining))):
                digest.update(chunk)
                remaining -= len(chunk)
    return f"size-and-ends:{size}:{digest.hexdigest()}"


def same_fingerprint(path: str | os.PathLike, recorded: str) -> bool:
    """Whether ``path`` still has the fingerprint ``recorded`` (an older record of a large file may be a
    whole-file SHA-256: compared as such)."""
    now = input_fingerprint(path) if recorded.startswith("size-and-ends:") else sha256_file(path)
    return now == recorded
