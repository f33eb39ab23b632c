"""qc's modules import one another without cycles (issue 14).

The check is .ci/lint's (`.ci/lint cycles`): grimp's import graph of qc, function-level imports
included, built on a copy of the package staged as installed (passes/ -> qc/passes, backends/ ->
qc/backends, from pyproject's package-dir), since grimp walks folders and in the checkout would
not see qc.passes and qc.backends. The layering contracts themselves are checked by `make lint`.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(REPO, ".ci", "lint")



def _load_lint():
    loader = importlib.machinery.SourceFileLoader("qc_ci_lint", LINT)
    spec = importlib.util.spec_from_loader("qc_ci_lint", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


lint = _load_lint()


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("stage"))
    lint.stage(dest)
    return dest


def test_stage_has_every_mapped_module(stage_dir):
    """The graph the checks read is the staged package: every module of every package-dir folder
    (passes/ and backends/ included) is in it, and qc is found in the stage, not the checkout."""
    expected = set()
    for package, folder in lint.package_dirs().items():
        top = os.path.join(REPO, folder)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if os.path.isfile(os.path.join(dirpath, d, "__init__.py"))]
            rel = os.path.relpath(dirpath, top)
            prefix = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            for name in filenames:
                if name.endswith(".py"):
                    expected.add(prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}")
    code = ("import importlib.util, json, grimp; origin = importlib.util.find_spec('qc').origin; "
            "print(json.dumps([origin, sorted(grimp.build_graph('qc', cache_dir=None).modules)]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=stage_dir, env=lint.staged_env(stage_dir),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    origin, modules = json.loads(proc.stdout)
    assert os.path.realpath(origin) == os.path.realpath(os.path.join(stage_dir, "qc", "__init__.py"))
    assert "qc.passes" in expected and "qc.backends" in expected
    assert expected - set(modules) == set()


def test_no_import_cycles(stage_dir):
    proc = lint.run_cycle_check(stage_dir)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    if proc.returncode:
        pytest.fail("import cycles among qc's modules (break each one: move the shared code down a layer, "
                    "or invert the dependency; a function-level import does not break a cycle here)\n\n"
                    + proc.stdout, pytrace=False)
