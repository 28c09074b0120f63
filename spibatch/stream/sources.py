"""One call to open any of the live sources by kind: what a pipeline's ``source:`` section names."""

from __future__ import annotations

from spibatch.errors import InputError

KINDS = ("euxfel-run", "karabo-bridge", "cxi-folder")


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
