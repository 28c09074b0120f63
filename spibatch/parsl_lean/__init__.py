"""Parsl's processes started without the optional packages Parsl imports and spibatch never uses there.

``import parsl`` imports every provider and the monitoring database, and with them whatever optional package
is installed: Kubernetes' client (``parsl.providers.kubernetes``), boto3 (the AWS provider) and SQLAlchemy
(the monitoring database; xraydb brings it).  Parsl imports each inside ``try: ... except ImportError`` and
turns that feature off when it is missing.  They are about 60 % of ``import parsl`` (0.8 -> 0.35 CPU s here),
and every process on the way to the first task result imports Parsl afresh, one after the other: the
driver, the interchange, the worker pool, its multiprocessing manager and each worker (spawned, not forked).

* :func:`main` (``python -m spibatch.parsl_lean SCRIPT ARGS...``): runs Parsl's ``interchange.py`` or
  ``process_worker_pool.py`` (found on PATH) as ``__main__`` with :data:`STAND_INS` first on ``sys.path`` and
  on ``PYTHONPATH``, so that the processes the pool spawns have them too;
* a stand-in (``stand_ins/<package>/__init__.py``) calls :func:`stand_in`: while the ``parsl`` package is
  being imported (its ``__init__`` has not finished), the package is not found; at any other time (a task
  importing xraydb, hence SQLAlchemy) the real package is imported and replaces the stand-in in
  ``sys.modules``;
* the worker pool's multiprocessing manager and workers are forked from a forkserver that is itself a fork of
  the pool, made once the pool has imported Parsl (:func:`warm_forkserver`, :mod:`spibatch.parsl_lean.forked`):
  each of them is then a fork of a process that has Parsl already, not a fresh interpreter importing it again,
  and no process imports it twice (Parsl uses the spawn context for them: no fork of the pool itself, which
  runs threads once started);
* :func:`import_parsl` (the driver, from :func:`spibatch.backends.parsl_common.config`): the same during this
  process's first ``import parsl``, through a finder on ``sys.meta_path``, for :data:`DRIVER_HIDE`; the
  Kubernetes site, whose provider needs Kubernetes' client, gives it to Parsl when it builds the provider (in
  whatever process: a test session too), so no other site's driver imports it (0.15 s of each run's start).

* the pool's task and result queues have locks the kernel frees when a worker holding one dies
  (:mod:`spibatch.parsl_lean.pool_queues`): an idle worker killed no longer stops every worker for good;
* ``requests`` and ``typeguard``, which Parsl imports unconditionally, are deferred in all these processes
  (:mod:`spibatch.parsl_lean.deferred`): a stand-in until Parsl has loaded, then the real package on first use;
* the pool's registration message lists a few packages' versions, not every installed one
  (:mod:`spibatch.parsl_lean.registration`: one METADATA read per package, on a shared filesystem too);
* the driver's interchanges and the local site's worker pool are forks of the driver made before Parsl starts
  (:mod:`spibatch.parsl_lean.zygote`, :mod:`~spibatch.parsl_lean.interchange_fork`,
  :mod:`~spibatch.parsl_lean.pool_fork`): the driver's one import of Parsl serves them too.

What a Parsl process started this way loses: Parsl's KubernetesProvider, AWSProvider and its monitoring
database, none of which spibatch uses inside the interchange or a worker; and the run-time type checks of
Parsl's own classes (typeguard's decorator is the identity while Parsl loads).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import runpy
import shutil
import sys
from pathlib import Path

STAND_INS = str(Path(__file__).resolve().parent / "stand_ins")
HIDE = ("kubernetes", "boto3", "sqlalchemy")   # Parsl imports them if present; its own processes never use them
DRIVER_HIDE = HIDE   # the Kubernetes site gives Parsl the client when it builds its provider
#                      (spibatch.backends.kubernetes._enable_parsl_kubernetes): other sites' drivers never load it


def parsl_initializing() -> bool:
    """Whether the ``parsl`` package is being imported right now (its ``__init__`` has not finished)."""
    parsl = sys.modules.get("parsl")
    return bool(getattr(getattr(parsl, "__spec__", None), "_initializing", False))


def _hidden(name: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(f"No module named {name!r} (left out while Parsl starts: spibatch.parsl_lean)",
                               name=name)


def stand_in(name: str) -> None:
    """The body of the stand-in of package ``name``: not found while Parsl is being imported, else the real
    package (imported from the rest of ``sys.path``, put in ``sys.modules`` in the stand-in's place)."""
    sys.modules.pop(name, None)
    if parsl_initializing():
        raise _hidden(name)
    import_real(name)


def real_spec(name: str):
    """The spec of the real package ``name``: found on ``sys.path`` without the stand-ins (None: not installed)."""
    path = [p for p in sys.path if os.path.realpath(p or ".") != STAND_INS]
    return importlib.machinery.PathFinder.find_spec(name, path)


def import_real(name: str):
    """The real package ``name`` (:func:`real_spec`), put in ``sys.modules`` in the place of whatever stood in
    for it."""
    sys.modules.pop(name, None)
    spec = real_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


class _Hide(importlib.abc.MetaPathFinder):
    """While Parsl is being imported: the packages ``hide`` are not found; else no opinion."""

    def __init__(self, hide: tuple[str, ...]):
        self.hide = hide

    def find_spec(self, name, path=None, target=None):
        if "." not in name and name in self.hide and parsl_initializing():
            raise _hidden(name)
        return None


def import_parsl(hide: tuple[str, ...] = DRIVER_HIDE):
    """``import parsl`` in this process, the first time without ``hide``; the ``parsl`` module."""
    if "parsl" not in sys.modules:
        from spibatch.parsl_lean.deferred import DeferFinder

        finders = [_Hide(hide), DeferFinder()]
        sys.meta_path[:0] = finders
        try:
            import parsl   # noqa: F401
        finally:
            for finder in finders:
                sys.meta_path.remove(finder)
    return sys.modules["parsl"]


def command(python: list[str], script: str) -> list[str]:
    """The words that start Parsl's ``script`` (``interchange.py``, ``process_worker_pool.py``) this lean way."""
    return list(python) + ["-m", "spibatch.parsl_lean", script]


POOL_SCRIPT = "process_worker_pool.py"
POOL_MODULE = "parsl.executors.high_throughput.process_worker_pool"


def warm_forkserver():
    """This process's multiprocessing forkserver, started now with Parsl's worker pool module in it; the forkserver
    context, whose processes are forks of it.  This process imports the module and forks the forkserver from
    itself (:mod:`spibatch.parsl_lean.forked`: no second import of Parsl, no fresh interpreter); where it cannot,
    multiprocessing starts one that imports the module in its own process."""
    import importlib
    import multiprocessing
    from multiprocessing import forkserver

    from spibatch.parsl_lean import forked

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([POOL_MODULE])
    importlib.import_module(POOL_MODULE)
    try:
        forked.start_forkserver()
    except forked.NotForked as exc:
        print(f"spibatch.parsl_lean: the forkserver is started afresh ({exc})", file=sys.stderr)
        forkserver.ensure_running()
    return context


def main(argv: list[str] | None = None) -> None:
    """``python -m spibatch.parsl_lean SCRIPT ARGS...``: Parsl's SCRIPT (on PATH, or a path) as ``__main__``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.exit("usage: python -m spibatch.parsl_lean SCRIPT [ARGS...]  (SCRIPT: interchange.py, "
                 "process_worker_pool.py)")
    script = shutil.which(argv[0]) or argv[0]
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [STAND_INS] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != STAND_INS])
    sys.path.insert(0, STAND_INS)
    sys.argv = [script] + argv[1:]
    if os.path.basename(script) == POOL_SCRIPT:
        import multiprocessing

        from spibatch.parsl_lean import pool_queues

        try:
            pool_queues.hold_temporary_files()   # the forkserver's socket in this pool's own folder (swept once dead)
        except OSError as exc:   # no usable temporary folder: multiprocessing makes its own, as before
            print(f"spibatch.parsl_lean: no folder of the pool's own ({exc})", file=sys.stderr)
        try:
            context = warm_forkserver()
        except (OSError, ValueError) as exc:   # no forkserver here (e.g. no room for its socket): Parsl's spawn
            print(f"spibatch.parsl_lean: no forkserver ({exc}); the pool spawns its processes", file=sys.stderr)
            context = multiprocessing.get_context("spawn")
        import parsl.multiprocessing   # the pool takes its context from here: the forkserver's, not spawn
        try:
            context = pool_queues.context(context)     # queues a dead worker cannot block
        except OSError as exc:   # no usable temporary folder, or no record locks on it: multiprocessing's queues
            print(f"spibatch.parsl_lean: the pool's queues keep multiprocessing's locks ({exc}): a worker killed "
                  "while idle can stop the pool", file=sys.stderr)
        parsl.multiprocessing.SpawnContext = context
        from spibatch.parsl_lean import registration

        registration.install()   # (after the forkserver's fork: the workers keep importlib's own)
    runpy.run_path(script, run_name="__main__")
