"""The EMC side of a follow: new chunks as :class:`~spibatch.emc.types.ShardSpec`, for ``run_emc(source=...)``.

:class:`ChunkShards` reads ``follow/index.jsonl`` from where it last stopped (whole lines only: a
line is written and fsync'ed after its chunk file is complete, so every chunk it names can be
read), and hands out each chunk's frames once, numbered on from ``start_frame`` without gaps, cut
into shards of at most ``frames_per_shard``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from spibatch import layout
from spibatch.emc.types import ShardSpec


class ChunkShards:
    """``poll() -> list[ShardSpec]`` over a follow folder's chunks, plus ``finished()`` and counts.

    follow_dir : the follower's folder (``RunLayout(run).follow``)
    start_frame : hits before this frame number are not handed out (e.g. those of the photons file
        EMC started from: :meth:`first_chunks` gives them)
    frames_per_shard : cut a chunk into shards of at most this many frames (None: one shard per chunk)
    """

    def __init__(self, follow_dir: str | os.PathLike, *, start_frame: int = 0, frames_per_shard: int | None = None):
        self.folder = Path(follow_dir)
        self.index = self.folder / layout.FOLLOW_INDEX
        self.next_frame = int(start_frame)
        self.frames_per_shard = frames_per_shard
        self.offset = 0
        self.chunks: list[dict] = []    # every chunk line read so far
        self.last: dict = {}            # the last commit line read
        self.end: dict | None = None

    def _read(self) -> None:
        if self.end is not None or not self.index.exists():
            return
        with open(self.index, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break
            line = json.loads(raw)
            self.offset += len(raw)
            if "end" in line:
                self.end = line
                break
            self.last = line
            if line["chunk"]:
                self.chunks.append(line)

    def poll(self) -> list[ShardSpec]:
        """The frames committed since the last poll, as shards numbered on from the last frame handed out."""
        self._read()
        specs = []
        for line in self.chunks:
            first, n = line["first_frame"], line["frames"]
            if first + n <= self.next_frame:
                continue
            path = os.fspath(self.folder / layout.CHUNKS_DIR / line["chunk"])
            start = self.next_frame - first
            per = self.frames_per_shard or n
            specs += ShardSpec.cut(path, start, n, per, first_frame=self.next_frame)
            self.next_frame = first + n
        return specs

    def first_chunks(self, min_frames: int) -> list[ShardSpec] | None:
        """Once at least ``min_frames`` hits are committed (or the follow ended with some), the shards of
        the chunks holding them (the poll position moves past them); else None.  EMC can start on
        these and poll for the rest."""
        self._read()
        if self.hits < min_frames and not (self.end is not None and self.hits > 0):
            return None
        return self.poll()

    def finished(self) -> bool:
        """True once the follower wrote its end line and every chunk has been handed out."""
        self._read()
        return self.end is not None and self.next_frame >= self.hits

    def has_new(self) -> bool:
        """Hits committed and not handed out yet, or the follower's end line: something for EMC to do."""
        self._read()
        return self.end is not None or self.hits > self.next_frame

    def received_by(self, hits: int) -> float | None:
        """When the newest frame of the commits holding the first ``hits`` hits arrived (s since the epoch; what
        an EMC iteration on those hits accounts for), or None when they are not all committed."""
        self._read()
        for line in self.chunks:
            if line["first_frame"] + line["frames"] >= hits:
                return line.get("last_received")
        return None

    @property
    def hits(self) -> int:
        """Hits committed so far (frames in the chunks)."""
        return self.last.get("hits", 0)

    @property
    def frames_seen(self) -> int:
        """Frames the follower processed so far, hits or not."""
        return self.last.get("frames_seen", 0)

    @property
    def end_reason(self) -> str | None:
        return None if self.end is None else self.end["end"]
