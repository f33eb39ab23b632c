"""pyproject.toml's package list: `pip install -e .` (the first `make`) warns ``Package would be
ignored`` for every folder of data files inside a package that is not itself listed."""
from __future__ import annotations

import os
import sys

from conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _setuptools_config() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def _package_dir(package: str, mapping: dict[str, str]) -> str:
    """The folder of ``package`` under setuptools' package-dir mapping (longest prefix wins)."""
    for prefix in sorted(mapping, key=len, reverse=True):
        if package == prefix or package.startswith(prefix + "."):
            rest = package[len(prefix):].lstrip(".").replace(".", os.sep)
            return os.path.join(REPO, mapping[prefix], rest)
    return os.path.join(REPO, package.replace(".", os.sep))


def _folders_with_files(top: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if root != top and files:
            found.append(os.path.relpath(root, top))
    return found


def test_every_folder_inside_a_package_is_a_listed_package():
    config = _setuptools_config()
    packages, mapping = set(config["packages"]), config["package-dir"]
    missing = []
    for package in sorted(packages):
        top = _package_dir(package, mapping)
        for folder in _folders_with_files(top):
            sub = package + "." + folder.replace(os.sep, ".")
            if sub not in packages:
                missing.append(sub)
    assert not missing, ("setuptools warns 'Package would be ignored' for these folders: add them to "
                         f"[tool.setuptools] packages: {', '.join(missing)}")


def test_package_data_covers_the_c_runtime():
    """Every C source, header and linker script of backends/c/runtime is shipped as package data."""
    import fnmatch

    data = _setuptools_config()["package-data"]
    runtime = os.path.join(REPO, "backends", "c")
    for root, _, files in os.walk(os.path.join(runtime, "runtime")):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), runtime)
            package_rel = {"qc.backends.c": rel}
            sub = os.path.dirname(rel).replace(os.sep, ".")
            package_rel["qc.backends.c." + sub] = name
            assert any(fnmatch.fnmatch(r, g) for p, r in package_rel.items() for g in data.get(p, [])), rel
