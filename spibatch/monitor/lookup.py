"""What one request of the monitor sees of the files under its root, resolved and listed once
(:class:`Lookup`), what its answers rest on (:func:`signature`, :func:`unchanged`: a run's summary is kept between
requests while those stay the same), and the runs under the root (:func:`find_runs`)."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

from spibatch.monitor.paths import SEARCH_DEPTH, OutsideRoot, is_run, within


RACY_NS = 2_000_000_000        # a file or folder changed this recently is not trusted by its stat alone


def signature(st: os.stat_result) -> tuple:
    """What says a file (or a folder's list of names) is unchanged: same inode, size, mtime and ctime."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode


def unchanged(deps: dict[str, tuple]) -> bool:
    """True when every path of ``deps`` (from :attr:`Lookup.deps`) still has the signature recorded."""
    for path, sig in deps.items():
        try:
            if signature(os.stat(path)) != sig:
                return False
        except (OSError, ValueError):
            return False
    return True


class Lookup:
    """The files under ``root`` as one request sees them: each folder resolved and listed (``scandir``)
    once, so that a file's path resolves with no system call and a missing file costs none.

    :meth:`inside`, :meth:`stat` and :meth:`is_file` answer as :func:`~spibatch.monitor.paths.inside`,
    :func:`stat_inside` and :func:`is_file_inside` do: ``realpath(folder/name)`` is
    ``realpath(folder)/name`` when ``name`` is no symlink, and a name that is one (or lies in a folder
    that cannot be listed) is resolved by ``realpath`` as before.  A file added after its folder was
    listed is seen by the next request.  Opening stays :func:`open_inside`'s (O_NOFOLLOW, the fd checked).

    ``deps``: the signature (:func:`signature`) of every folder listed and every file found or opened,
    so a result computed from them can be reused while :func:`unchanged` says so; ``cacheable`` is False
    when the answer also rests on something the signatures do not cover (a symlink, a folder that could
    not be listed) or on something changed within RACY_NS of being looked at (a change in the same
    clock tick would not show in its mtime).
    """

    def __init__(self, root: Path):
        self.root = os.fspath(root)
        self._real: dict[str, str] = {self.root: self.root}      # folder as named -> its realpath
        self._absent: set[str] = set()                            # folders their parent's listing lacks
        self._listed: dict[str, dict[str, os.DirEntry] | None] = {}   # real folder -> entries (None: not listable)
        self._stats: dict[str, os.stat_result | None] = {}
        self.deps: dict[str, tuple] = {}
        self.cacheable = True

    def known(self, folder: Path) -> None:
        """Note that ``folder`` is already resolved (a run's folder from find_runs / resolve_run)."""
        self._real.setdefault(os.fspath(folder), os.fspath(folder))

    def depends(self, real: str, st: os.stat_result) -> None:
        """Record that the answer rests on ``real`` as ``st`` shows it."""
        self.deps[real] = signature(st)
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS:
            self.cacheable = False

    def listing(self, real_dir: str) -> dict[str, os.DirEntry] | None:
        """The entries of a resolved folder by name, None when it is not a folder that can be listed."""
        try:
            return self._listed[real_dir]
        except KeyError:
            pass
        entries = None
        if real_dir not in self._absent:
            try:
                self.depends(real_dir, os.stat(real_dir))      # before listing: a change after it shows
                with os.scandir(real_dir) as it:
                    entries = {e.name: e for e in it}
            except (OSError, ValueError):
                entries = None
        self._listed[real_dir] = entries
        return entries

    def names(self, folder) -> list[str]:
        """``os.listdir(folder)`` from the listing; OSError when it is not a folder that can be listed."""
        real = self._folder(os.fspath(folder))
        entries = self.listing(real)
        if entries is None:
            raise FileNotFoundError(errno.ENOENT, "not a folder", os.fspath(folder))
        return list(entries)

    def _folder(self, head: str) -> str:
        real = self._real.get(head)
        if real is None:
            real, entry, final = self._entry(head)
            if final and entry is None:    # not there: nothing under it is either
                self._absent.add(real)
            self._real[head] = real
        return real

    def _entry(self, path) -> tuple[str, os.DirEntry | None, bool]:
        """(realpath of ``path``, its entry in its folder's listing or None, whether that answer is final:
        False for a resolved folder, a symlink or a name in a folder that cannot be listed -- ask the system)."""
        path = os.fspath(path)
        known = self._real.get(path)
        if known is not None:
            return known, None, False
        head, name = os.path.split(path)
        if not head or not name or name in (".", ".."):
            self.cacheable = False
            return os.path.realpath(path), None, False
        real_dir = self._folder(head)
        real = real_dir + name if real_dir.endswith("/") else real_dir + "/" + name
        if real_dir in self._absent:
            return real, None, True
        entries = self.listing(real_dir)
        entry = entries.get(name) if entries is not None else None
        if entries is None or (entry is not None and entry.is_symlink()):
            self.cacheable = False
            return os.path.realpath(path), None, False
        return real, entry, True

    def inside(self, path) -> str:
        """:func:`~spibatch.monitor.paths.inside` of ``path``, as a string."""
        real = self._entry(path)[0]
        if not within(self.root, real):
            raise OutsideRoot(f"{Path(path).name} is outside the monitored folder")
        return real

    def stat(self, path) -> os.stat_result | None:
        """:func:`stat_inside` of ``path``; from the listing (no system call for a missing file)."""
        key = os.fspath(path)
        try:
            return self._stats[key]
        except KeyError:
            pass
        try:
            real, entry, final = self._entry(path)
            if not within(self.root, real):
                st = None
            elif final:    # no symlink: stat and lstat agree
                st = entry.stat(follow_symlinks=False) if entry is not None else None
            else:
                st = os.stat(real)
            if st is not None:
                self.depends(real, st)
        except (OSError, ValueError):
            st = None
        self._stats[key] = st
        return st

    def is_file(self, path) -> bool:
        """:func:`is_file_inside` of ``path``."""
        st = self.stat(path)
        return st is not None and stat.S_ISREG(st.st_mode)

    def is_dir(self, path) -> bool:
        st = self.stat(path)
        return st is not None and stat.S_ISDIR(st.st_mode)


def find_runs(root: Path) -> list[Path]:
    """Every run folder under ``root`` (the root itself included), searched SEARCH_DEPTH levels deep.

    A run's own subfolders (``emc/``, ``phase/``) are not listed as runs of their own; symlinked
    folders are followed only when they stay under the root.
    """
    found: list[Path] = []
    lookup = Lookup(root)

    def walk(folder: Path, depth: int) -> None:
        if is_run(folder, root, lookup):
            found.append(folder)
            return
        if depth >= SEARCH_DEPTH:
            return
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if not entry.is_dir():
                    continue
                child = Path(lookup.inside(Path(entry.path)))
            except (OSError, OutsideRoot):
                continue
            walk(child, depth + 1)

    walk(root, 0)
    return found
