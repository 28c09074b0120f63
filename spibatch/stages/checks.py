"""Helpers of the stages' ``check`` functions: an input path that must be a readable file, and what the
work may use (:class:`spibatch.estimates.Budget`) on this machine or on a site's workers."""

from __future__ import annotations

from contextlib import contextmanager

from spibatch.errors import InputError
from spibatch.estimates import Budget
from spibatch.io.files import require_file  # noqa: F401  (the stages import it from here)


def budget_for(site=None) -> Budget:
    """What one node of ``site`` (None or local: this machine) may use: the memory a site file declares
    per node or pod (``slurm.mem_per_node_gb``, ``kubernetes.memory_limit``), else this machine's, and the
    worker processes that share it (the provider's ranks per node; MPI ranks in HPC mode); cores and
    devices: this machine's, or for a remote site ``workers`` nodes of up to 128 cores (an upper bound, so a
    time floor stays a floor)."""
    here = Budget.here()
    sharing = {}
    if site is not None:
        from spibatch.backends import provider_for

        sharing = {"per_node": provider_for(site).processes_per_node(), "hpc": site.emc_mode == "hpc"}
    if site is None or site.provider == "local":
        cores = getattr(getattr(site, "local", None), "cores", None) if site is not None else None
        return Budget(here.memory, here.memory_source, cores or here.cores, 1, **sharing)
    memory, source = here.memory, f"{here.memory_source}; the site does not declare its nodes' memory"
    options = site.options
    if site.provider == "slurm" and getattr(options, "mem_per_node_gb", None):
        memory, source = options.mem_per_node_gb * 10 ** 9, f"{site.source}: slurm.mem_per_node_gb"
    elif site.provider == "kubernetes":
        from spibatch.backends.k8s_checks import parse_quantity

        try:
            memory = int(parse_quantity(options.memory_limit))
            source = f"{site.source}: kubernetes.memory_limit"
        except ValueError:
            pass   # the provider's own checks name a bad quantity
    return Budget(memory, source, max(here.cores, 128 * site.workers), site.workers,
                  where=f"a node of site {site.name}", **sharing)


@contextmanager
def naming(path):
    """Give an InputError raised inside (by code that knows no file) the file ``path`` (the pipeline file)."""
    try:
        yield
    except InputError as exc:
        if exc.path is None and path is not None:
            raise InputError(exc.problem, path=path, field=exc.field, fix=exc.fix) from None
        raise


@contextmanager
def keyed(dataset: str | None, key: str):
    """An InputError about the dataset ``dataset`` (a name the config gave) also names the config ``key``."""
    try:
        yield
    except InputError as exc:
        if dataset and exc.field and exc.field.strip("/") == dataset.strip("/"):
            raise InputError(exc.problem, path=exc.path, field=f"{exc.field} ({key})", fix=exc.fix) from None
        raise
