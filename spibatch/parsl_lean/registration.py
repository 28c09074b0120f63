"""The worker pool's registration message without a scan of every installed package.

Parsl's worker pool registers with the interchange by a message that lists every installed distribution with its
version (``{d.metadata['Name']: d.version for d in importlib.metadata.distributions()}``): a read of each
package's METADATA file, 0.13 CPU s for the 176 packages here, on the first result's path -- and on a cluster whose
environment lies on a shared filesystem (NFS, Lustre), one metadata round trip per package at every block's start.
Parsl uses the list only to answer ``connected_managers_packages()``, which spibatch never asks.

:func:`install` (the pool's process, before Parsl's script runs) gives that one caller -- the pool's
``create_reg_message`` -- the versions of :data:`REPORTED` only (0.03 s); every other call of
``importlib.metadata.distributions`` (``entry_points()`` inside importlib, a task) gets the whole list as before.
"""

from __future__ import annotations

import sys

REPORTED = ("parsl", "spibatch", "numpy", "scipy", "h5py", "dill", "pyzmq", "cloudpickle", "tblib", "psutil")
CALLER = "create_reg_message"   # Parsl's Manager method that builds the registration message


def reported() -> list:
    """The distributions of :data:`REPORTED` that are installed."""
    import importlib.metadata as metadata

    found = []
    for name in REPORTED:
        try:
            found.append(metadata.distribution(name))
        except metadata.PackageNotFoundError:
            pass
    return found


def install() -> None:
    """``importlib.metadata.distributions`` answering the pool's registration with :func:`reported` only."""
    import importlib.metadata as metadata

    real = metadata.distributions
    if getattr(real, "spibatch_registration", False):
        return

    def distributions(**kwargs):
        caller = sys._getframe(1)
        if not kwargs and caller.f_code.co_name == CALLER and caller.f_globals.get("__name__") == "__main__":
            return reported()
        return real(**kwargs)

    distributions.spibatch_registration = True
    distributions.__doc__ = real.__doc__
    metadata.distributions = distributions
