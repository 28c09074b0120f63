"""Sites: where a pipeline's work runs.

A *site* is one YAML file (``site_configs/*.yaml``), validated like the pipeline file
(pydantic, unknown keys refused, one-line errors naming file, line and key).  Common fields:

``name``       a label for the site (lower-case, digits, '-')
``provider``   ``local`` | ``slurm`` | ``kubernetes``
``workers``    how many workers (HTEX workers, MPI ranks, pods) run at once
``emc_mode``   ``hpc`` (the MPI driver as one job of ``workers`` ranks) or
               ``htc`` (one Parsl task per shard per iteration); default: the
               provider's ``default_emc_mode`` (hpc for local and slurm, htc for kubernetes)
``container``  ``{runtime: none|apptainer|docker|charliecloud, image, binds: [...]}``
               (:mod:`spibatch.backends.launchers` turns it into a command prefix)

plus at most one provider section, ``local:``, ``slurm:`` or ``kubernetes:``, named like
the provider, whose schema is the provider class's ``Options``.

:func:`load_site` reads a site file (``load_site(None)``: the embedded local default,
``spibatch/data/sites/local.yaml``); :func:`provider_for` gives the site's
:class:`~spibatch.backends.base.Provider` (the contract: ``parsl_config``, ``render`` ->
:class:`~spibatch.backends.base.Rendered`, ``preflight``, ``dry_run``, ``check_rendered``,
``emc_launch`` -> :class:`~spibatch.backends.base.Launch`, ``supports_hpc``, ``node_cores``,
``ranks_per_node``, ``threads_per_worker``).  Parsl and the kubernetes client are imported
only inside the providers' methods, so this package is light.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from spibatch.backends.base import MPI_LABEL, TASKS_LABEL, Launch, Provider, Rendered, Unreachable
from spibatch.errors import InputError
from spibatch.yaml_models import Section, error_line, read_yaml_mapping

PROVIDERS: dict[str, tuple[str, str]] = {   # provider name -> (module, class)
    "local": ("spibatch.backends.local", "LocalProvider"),
    "slurm": ("spibatch.backends.slurm", "SlurmProvider"),
    "kubernetes": ("spibatch.backends.kubernetes", "KubernetesProvider"),
}


class Container(Section):
    """The image workers (or each MPI rank) run in."""

    runtime: Literal["none", "apptainer", "docker", "charliecloud"] = Field(
        "none", description="none: run on the host; apptainer: `apptainer exec IMAGE`; docker: `docker run IMAGE`; "
        "charliecloud: `ch-run IMAGE --`")
    image: str | None = Field(None, description="apptainer: a .sif file or docker:// / oras:// URI; docker: an image "
                              "reference; charliecloud: an unpacked image directory")
    binds: list[str] = Field(default_factory=list, description="host paths mounted at the same path inside "
                             "(`a` or `a:b`); the run directory is always added")
    gpu: bool = Field(False, description="expose NVIDIA GPUs (apptainer --nv, docker --gpus all)")
    options: list[str] = Field(default_factory=list, description="extra arguments for the runtime, placed before "
                               "the image")

    @model_validator(mode="after")
    def _image(self) -> "Container":
        if self.runtime != "none" and not self.image:
            raise ValueError(f"runtime {self.runtime} needs an image")
        if self.image and re.search(r"[\s$`\\\"';|&<>(){}]", self.image):    # written into workers' and batch scripts
            raise ValueError(f"image {self.image!r} holds a space or a shell character")
        for value in [*self.binds, *self.options]:   # quoted, but a Slurm script's heredoc still expands $ and `,
            if re.search(r"[$`\\\n{}]", value):    # and Parsl's str.format of its launch line fills in {...}
                raise ValueError(f"{value!r} holds $, ` , \\, {{, }} or a newline, which the batch scripts or Parsl's "
                                 "launch line would expand")
        return self


class Site(Section):
    """The common part of a site file; the provider section is added by :func:`site_model`."""

    name: str = Field("local", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40,
                      description="label of the site: lower-case letters, digits and '-'")
    provider: Literal["local", "slurm", "kubernetes"] = Field("local", description="where work goes")
    workers: int = Field(2, ge=1, le=100_000, description="workers at once: HTEX workers, MPI ranks of the HPC EMC "
                         "job, pods")
    emc_mode: Literal["hpc", "htc"] | None = Field(None, description="hpc: EMC as one MPI job of `workers` ranks; "
                                                   "htc: one task per shard per iteration; default: hpc for local "
                                                   "and slurm, htc for kubernetes")
    container: Container = Field(default_factory=Container)
    source: Path | None = Field(None, exclude=True, description="(set by load_site) the file this came from")

    @model_validator(mode="after")
    def _defaults(self) -> "Site":
        if self.emc_mode is None:
            self.emc_mode = provider_class(self.provider).default_emc_mode
        return self

    @property
    def options(self) -> BaseModel:
        """The provider section (the provider class's ``Options``)."""
        return getattr(self, self.provider)


@lru_cache(maxsize=None)
def provider_class(provider: str) -> type[Provider]:
    """The :class:`~spibatch.backends.base.Provider` subclass of ``provider``."""
    module, name = PROVIDERS[provider]
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise InputError(f"provider '{provider}' is not part of this installation", field="provider",
                         fix=f"use one of: {', '.join(p for p in PROVIDERS if _available(p))}") from None


def _available(provider: str) -> bool:
    return importlib.util.find_spec(PROVIDERS[provider][0]) is not None


def provider_for(site: Site) -> Provider:
    """The provider of ``site`` (a validated :class:`Site`), ready to render, check and configure Parsl."""
    return provider_class(site.provider)(site)


@lru_cache(maxsize=None)
def site_model(provider: str) -> type[Site]:
    """The Site model with the ``provider`` section typed by that provider's ``Options``."""
    options = provider_class(provider).Options
    return create_model(f"Site_{provider}", __base__=Site,
                        **{provider: (options, Field(default_factory=options))})


def default_site_path() -> Path:
    """The embedded local site used when no --site is given."""
    from importlib import resources

    return Path(str(resources.files("spibatch") / "data" / "sites" / "local.yaml"))


def load_site(path: str | Path | None = None) -> Site:
    """Read and validate a site YAML file (None: the embedded local default).

    Raises InputError (one line: file, line, key, expected, found) on any mistake.
    """
    path = default_site_path() if path is None else Path(path)
    data, lines = read_yaml_mapping(path, field="--site", missing_fix="give the path of a site YAML file (examples "
                                    "in site_configs/)", top_fix="start the file with `provider:` and `workers:`", holds="keys")
    if not data:
        raise InputError("the site file is empty", path=path, field="--site",
                         fix="start it with `provider:` and `workers:` (examples in site_configs/), or leave --site out "
                         "for the local default")
    provider = data.get("provider", "local")
    if provider not in PROVIDERS:
        where = f"line {lines.get(('provider',), 1)}: provider"
        raise InputError(f"expected one of {', '.join(PROVIDERS)}; found {provider!r}", path=path, field=where,
                         fix="set provider to local, slurm or kubernetes")
    for other in PROVIDERS:
        if other != provider and other in data:
            raise InputError(f"a '{other}' section, but provider is {provider}", path=path,
                             field=f"line {lines.get((other,), 1)}: {other}",
                             fix=f"remove the section, or set provider: {other}")
    try:
        model = site_model(provider)
    except InputError as exc:
        raise InputError(exc.problem, path=path, field=f"line {lines.get(('provider',), 1)}: provider",
                         fix=exc.fix) from None
    try:
        site = model.model_validate(data)
    except ValidationError as exc:
        raise error_line(exc, data, lines, path, model, reference="site_configs/*.yaml document every key") from None
    site.source = path.resolve()
    return site


def dump_site(site: Site) -> str:
    """The resolved site as YAML (every default written out)."""
    from spibatch.yaml_models import dump_settings

    data = site.model_dump(mode="json", exclude={"source"})
    return dump_settings({k: v for k, v in data.items() if k not in PROVIDERS or k == site.provider})


__all__ = ["PROVIDERS", "Site", "Container", "load_site", "dump_site", "site_model", "provider_class",
           "provider_for", "default_site_path", "Provider", "Rendered", "Launch", "Unreachable", "TASKS_LABEL",
           "MPI_LABEL"]
