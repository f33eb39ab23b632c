"""The documentation's recipes and sample outputs, run: docs cannot drift from the code.

- docs/writing-passes.md: the lit/FileCheck recipe for a pass outside the repository is copied
  into a temporary folder and run exactly as the page says.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def _read_doc(name: str) -> str:
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


def _blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, body, the paragraph line just before the fence) for every fenced block."""
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        out.append((m.group(1), m.group(2), before))
    return out


def _tool_env() -> dict[str, str]:
    """The environment of a user whose venv is active: its bin folder first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


# -- docs/writing-passes.md ---------------------------------------------------------------------
def test_writing_passes_lit_recipe_runs_outside_the_repository(tmp_path):
    blocks = _blocks(_read_doc("docs/writing-passes.md"))
    folder = tmp_path / "my-passes"
    (folder / "tests").mkdir(parents=True)
    pass_source = next(body for lang, body, _ in blocks if lang == "python")  # the worked example
    (folder / "fold_double_cast.py").write_text(pass_source)
    files = {m.group(1): body for _, body, before in blocks if (m := re.fullmatch(r"`([\w./-]+)`:", before))}
    assert set(files) == {"tests/lit.cfg.py", "tests/fold-double-cast.qir"}, files.keys()
    for rel, body in files.items():
        (folder / rel).write_text(body)
    console = next(body for lang, body, _ in blocks if lang == "console" and "$ lit" in body)
    command, *expected = console.splitlines()
    env = _tool_env()
    if shutil.which("lit", path=env["PATH"]) is None:
        pytest.fail("lit is not on PATH: install qc's test extras (make setup)")
    proc = subprocess.run(command.removeprefix("$ "), shell=True, cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout}\n{proc.stderr}"
    for line in expected:
        assert line in proc.stdout.splitlines(), f"{line!r} not in the output of {command}:\n{proc.stdout}"
