"""Packages Parsl imports unconditionally while it loads but uses only later, or never, in its own processes.

``requests`` (``parsl.addresses``: one function asks a web service for the public address; the HTTP staging
provider) and ``typeguard`` (whose ``typechecked`` decorates 33 of Parsl's classes and functions as they are
defined; it imports ``unittest.mock`` and more) are 60-70 % of what is left of ``import parsl`` after
:mod:`spibatch.parsl_lean` leaves out the optional packages: 0.29 -> 0.09 CPU s for the interchange's imports.

While a ``parsl`` module is being imported, ``import requests`` / ``import typeguard`` give a
:class:`Deferred` module: ``typechecked`` is the identity then (Parsl's own classes are not type-checked in
these processes), and the first attribute looked up once Parsl has loaded imports the real package, which
replaces the stand-in in ``sys.modules`` (``requests.get`` works; a task's ``from typeguard import
typechecked`` gets the real decorator).  Used by the stand-in packages of ``stand_ins/`` (Parsl's
interchange, worker pool and its children) and by :func:`spibatch.parsl_lean.import_parsl` (the driver).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

from spibatch.parsl_lean import import_real, real_spec

DEFER = ("requests", "typeguard")


def parsl_loading() -> bool:
    """Whether ``parsl`` or one of its modules is being imported right now."""
    for name, module in list(sys.modules.items()):
        if (name == "parsl" or name.startswith("parsl.")) and \
                getattr(getattr(module, "__spec__", None), "_initializing", False):
            return True
    return False


def typechecked(func=None, **options):
    """typeguard's decorator: the identity while Parsl loads, else the real one."""
    if parsl_loading():
        return func if func is not None else (lambda f: f)
    real = sys.modules.get("typeguard")
    real = import_real("typeguard") if real is None or isinstance(real, Deferred) else real
    return real.typechecked(func, **options) if func is not None else real.typechecked(**options)


class Deferred(types.ModuleType):
    """Stands in for a package of :data:`DEFER` until an attribute of it is needed (see the module notes)."""

    def __reduce__(self):
        """Pickled (dill pickles the modules a task's function refers to) as the real package, imported where
        it is unpickled -- a stand-in cannot be."""
        return importlib.import_module, (self.__name__,)

    def __getattr__(self, attr: str):
        real = self.__dict__.get("_real")
        if real is not None:          # loaded since: whoever still holds this stand-in gets the real attributes
            return getattr(real, attr)
        if attr == "typechecked" and self.__name__ == "typeguard":
            return typechecked
        registered = sys.modules.get(self.__name__) is self    # not while the import system builds it
        if not registered or (attr.startswith("__") and attr not in PUBLIC_DUNDERS):
            raise AttributeError(attr)
        if attr == "__file__":   # where the real package is, without running it: what inspect.getmodule asks of
            if "_origin" not in self.__dict__:   # every module (Parsl's DataFlowKernel walks inspect.stack() at
                spec = real_spec(self.__name__)  # load: 0.1 s of imports)
                self.__dict__["_origin"] = spec.origin if spec is not None and spec.has_location else None
            if self.__dict__["_origin"]:
                return self.__dict__["_origin"]
        if attr == "__path__" and parsl_loading() and \
                not sys._getframe(1).f_code.co_filename.startswith("<frozen importlib"):
            raise AttributeError(attr)   # the probe of `from typeguard import typechecked` (made from C, in the
            #                              importing frame); a submodule's import asks from importlib: the real one
        self.__dict__["_real"] = import_real(self.__name__)
        return getattr(self._real, attr)


PUBLIC_DUNDERS = ("__path__", "__version__", "__all__", "__file__")


def defer(name: str) -> None:
    """The body of a stand-in package of :data:`DEFER`: a :class:`Deferred` while Parsl loads, else the real one."""
    if parsl_loading():
        sys.modules[name] = Deferred(name)
    else:
        import_real(name)


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return Deferred(spec.name)

    def exec_module(self, module) -> None:
        return None


class DeferFinder(importlib.abc.MetaPathFinder):
    """On ``sys.meta_path`` (the driver): packages of :data:`DEFER` imported while Parsl loads are Deferred."""

    def find_spec(self, name, path=None, target=None):
        if name in DEFER and parsl_loading():
            return importlib.machinery.ModuleSpec(name, _Loader())
        return None
