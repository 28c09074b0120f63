"""One call to open any of the live sources by kind: what a pipeline's ``source:`` section names."""

from __future__ import annotations

import re

from spibatch.errors import InputError

KINDS = ("euxfel-run", "karabo-bridge", "cxi-folder")


def endpoint_problem(target: str, schemes: tuple[str, ...] = ("tcp", "ipc")) -> str | None:
    """Why ``target`` is not a ZeroMQ endpoint of ``schemes`` (``tcp://host:port`` with a port from 1 to 65535,
    ``ipc://path``, ``inproc://name``), None when it is one.  A port of 70000 bound 4464 (ZeroMQ keeps its low 16
    bits), and 0 a random port nobody was told."""
    tcp = re.fullmatch(r"tcp://([^:/\s]+):(\d+)", target)
    if tcp is not None and "tcp" in schemes:
        port = int(tcp.group(2))
        return None if 1 <= port <= 65535 else f"port {port} is not one from 1 to 65535"
    scheme = re.fullmatch(r"(ipc|inproc)://\S+", target)
    if scheme is not None and scheme.group(1) in schemes:
        return None
    return f"not a ZeroMQ endpoint ({' or '.join(s + '://' for s in schemes)}...)"


def open_source(kind: str, target: str, frame_shape: tuple[int, ...], *, detector_name: str = "AGIPD1M",
                settle_s: float = 1.0, bridge_source: str | None = None, bridge_key: str = "image.data",
                bridge_sock: str = "REQ"):
    """The source of ``kind`` (one of :data:`KINDS`) at ``target`` (a run folder, a ZeroMQ endpoint, a folder)
    for frames of ``frame_shape``; ``detector_name``: a key of :data:`spibatch.stream.euxfel.DETECTORS`;
    ``settle_s``: how long a file must stay unchanged before it is read (run folder, CXI folder)."""
    if kind == "euxfel-run":
        from spibatch.stream.euxfel import RunFolderSource

        return RunFolderSource(target, frame_shape, detector_name, settle_s=settle_s)
    if kind == "karabo-bridge":
        from spibatch.stream.bridge import BridgeSource

        return BridgeSource(target, frame_shape, source=bridge_source, key=bridge_key, sock=bridge_sock)
    if kind == "cxi-folder":
        from spibatch.stream.cxifolder import CxiFolderSource

        return CxiFolderSource(target, frame_shape, settle_s=settle_s)
    raise InputError(f"unknown source kind {kind!r}", field="kind",
                     fix="use euxfel-run, karabo-bridge or cxi-folder")
