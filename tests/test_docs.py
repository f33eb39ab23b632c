"""The documentation's recipes and sample outputs, run: docs cannot drift from the code.

- docs/writing-passes.md: the lit/FileCheck recipe for a pass outside the repository is copied
  into a temporary folder and run exactly as the page says.
- README.md (the tour) and docs/getting-started.md: every ``$ qc ...`` line of a ``text`` block
  is run, in the order of the page, in one scratch folder (``LIGHT`` / ``$LIGHT`` is the onnx
  package's light-model folder; ``convbn.qir`` is the page's text block that starts with
  ``module @convbn``), and its output (stdout and stderr in the order written) must have the
  shape of the sample below it: the same sequence of lines by indentation and leading field
  name (``pipeline``, ``  ops``, ``(import)``, ``remarks``, ...), numbers ignored; a ``...``
  line in a sample stands for any number of lines.

  The commands on SmolLM2-135M (the `make demo` part of the tour: building the model, compiling
  it with calibration and evaluating it, about 2 minutes on two cores) run only with QC_SLOW=1.

When a sample no longer matches, the failure prints the new output; ``python tests/test_docs.py
--update`` (QC_SLOW=1 for the SmolLM2 samples too) runs the commands and rewrites the samples in
the pages: numbers are refreshed in samples that still match line for line, and a sample whose
shape changed is replaced by the whole new output (elide long parts with ``...`` by hand).
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest

from conftest import REPO

FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
TOUR_DOCS = ("README.md", "docs/getting-started.md")
SLOW = bool(os.environ.get("QC_SLOW"))
LIGHT_DIR = os.path.join(os.path.dirname(__import__("onnx").__file__), "backend", "test", "data", "light")


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


# -- README.md and docs/getting-started.md: `$ qc ...` samples ----------------------------------
@dataclass
class Sample:
    doc: str
    command: str      # as written, after "$ "
    expected: list[str]  # the sample output lines
    start: int        # character offsets of the output lines in the page
    end: int


def _samples(doc: str, text: str) -> list[Sample]:
    """Each ``$ qc ...`` line of a ``text`` block with the lines up to the next ``$`` or the block's end."""
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) != "text":
            continue
        body_start = m.start(2)
        lines = m.group(2).splitlines(keepends=True)
        offsets = [body_start + sum(len(x) for x in lines[:i]) for i in range(len(lines) + 1)]
        commands = [i for i, line in enumerate(lines) if line.startswith("$ qc ")]
        for k, i in enumerate(commands):
            j = commands[k + 1] if k + 1 < len(commands) else len(lines)
            out.append(Sample(doc, lines[i][2:].rstrip("\n"), [x.rstrip("\n") for x in lines[i + 1:j]],
                              offsets[i + 1], offsets[j]))
    return out


def _needs_smollm2(command: str) -> bool:
    return "smollm2" in command


IR_WORDS = {"module", "const", "func", "return", "weights", "graph"}


def _signature(line: str) -> str:
    """A line's shape: its indentation and leading field name (the text before ``: ``, or its first
    word; for a text IR line its first word: ``const``, ``%r0``, ``return``), numbers masked."""
    indent = len(line) - len(line.lstrip(" "))
    body = line.strip()
    first = (body.split() or [""])[0]
    m = re.match(r"([^:=(]*?|\([^)]*\)):(\s|$)", body)
    ir_line = first.startswith(("%", "@", "}")) or first in IR_WORDS
    field = m.group(1) if m and not ir_line else first
    return " " * indent + re.sub(r"\d+(\.\d+)?", "N", field)


def _matches(expected: list[str], actual: list[str]) -> list[int] | None:
    """For each expected line the index of the actual line it matches (``...`` lines: -1), or None.
    A ``...`` line matches any number of actual lines."""

    want = [None if line.strip() == "..." else _signature(line) for line in expected]
    have = [_signature(line) for line in actual]

    @functools.cache
    def match(i: int, j: int) -> tuple[int, ...] | None:
        if i == len(want):
            return () if j == len(have) else None
        if want[i] is None:
            for k in range(j, len(have) + 1):
                rest = match(i + 1, k)
                if rest is not None:
                    return (-1, *rest)
            return None
        if j < len(have) and have[j] == want[i]:
            rest = match(i + 1, j + 1)
            return None if rest is None else (j, *rest)
        return None

    found = match(0, 0)
    return None if found is None else list(found)


def _convbn_text(text: str) -> str:
    return next(body for lang, body, _ in _blocks(text) if lang == "text" and body.startswith("module @convbn"))


def _prepare(workdir: str) -> None:
    """The files the tour's commands read: convbn.qir, out/, and (QC_SLOW) SmolLM2-135M as the demo builds it."""
    os.makedirs(os.path.join(workdir, "out"), exist_ok=True)
    with open(os.path.join(workdir, "convbn.qir"), "w") as f:
        f.write(_convbn_text(_read_doc("README.md")))


def _run_command(command: str, workdir: str) -> list[str]:
    """Run a doc's ``qc ...`` command as a user would in ``workdir``; its output lines with the
    placeholders put back (LIGHT for the light-model folder)."""
    placeholder = "$LIGHT" if "$LIGHT" in command else "LIGHT"
    shell = command.replace("$LIGHT/", LIGHT_DIR + "/").replace("LIGHT/", LIGHT_DIR + "/")
    if _needs_smollm2(command) and not os.path.exists(os.path.join(workdir, "out", "smollm2-135m.onnx")):
        build = subprocess.run("qc models build smollm2-135m -o out/smollm2-135m.onnx", shell=True, cwd=workdir,
                               env=_tool_env(), capture_output=True, text=True, timeout=1200)
        assert build.returncode == 0, build.stderr
    env = {**_tool_env(), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.run(shell, shell=True, cwd=workdir, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=1200)
    assert proc.returncode == 0, f"`{command}` failed (exit {proc.returncode}):\n{proc.stdout}"
    return proc.stdout.replace(LIGHT_DIR, placeholder).splitlines()


def _tour_samples() -> list[Sample]:
    return [s for doc in TOUR_DOCS for s in _samples(doc, _read_doc(doc))]


@pytest.fixture(scope="module")
def tour_outputs(tmp_path_factory) -> dict[str, list[str]]:
    """The output of every tour command (each distinct command once), run in the order of the pages."""
    workdir = str(tmp_path_factory.mktemp("tour"))
    _prepare(workdir)
    outputs: dict[str, list[str]] = {}
    for sample in _tour_samples():
        if sample.command not in outputs and (SLOW or not _needs_smollm2(sample.command)):
            outputs[sample.command] = _run_command(sample.command, workdir)
    return outputs


def test_the_tour_has_commands_to_run():
    commands = [s.command for s in _tour_samples()]
    assert any(c.startswith("qc compile LIGHT/") for c in commands)
    assert any(c.startswith("qc opt convbn.qir") for c in commands)
    assert sum(1 for s in _tour_samples() if s.doc == "docs/getting-started.md") >= 3


@pytest.mark.parametrize("sample", _tour_samples(), ids=lambda s: f"{s.doc}: {s.command[:60]}")
def test_tour_sample_has_the_shape_of_the_output(sample: Sample, tour_outputs):
    if sample.command not in tour_outputs:
        pytest.skip("SmolLM2-135M commands run with QC_SLOW=1 (about 2 minutes)")
    actual = tour_outputs[sample.command]
    if _matches(sample.expected, actual) is None:
        pytest.fail(f"the sample of `$ {sample.command}` in {sample.doc} no longer has the shape of its output; "
                    "regenerate with `python tests/test_docs.py --update` (QC_SLOW=1 for SmolLM2). New output:\n"
                    + "\n".join(actual))


def _updated(sample: Sample, actual: list[str]) -> list[str]:
    """The sample refreshed from ``actual``: line for line where it still matches (keeping ``...``
    lines and lines the page shortened with ``...``), else the whole new output; the blank lines
    that end the sample stay."""
    kept = list(sample.expected)
    blank = []
    while kept and kept[-1] == "":
        blank.append(kept.pop())
    found = _matches(sample.expected, actual)
    if found is None:
        return actual + blank
    return [want if j == -1 or "..." in want else actual[j] for want, j in zip(sample.expected, found)]


def update_docs() -> None:
    """Rewrite the tour samples of README.md and docs/getting-started.md from fresh output."""
    import tempfile

    with tempfile.TemporaryDirectory() as workdir:
        _prepare(workdir)
        outputs: dict[str, list[str]] = {}
        for sample in _tour_samples():  # in page order: later commands read what earlier ones wrote
            if sample.command not in outputs and (SLOW or not _needs_smollm2(sample.command)):
                outputs[sample.command] = _run_command(sample.command, workdir)
        for doc in TOUR_DOCS:
            text = _read_doc(doc)
            for sample in reversed(_samples(doc, text)):  # from the end: the offsets stay valid
                if sample.command in outputs:
                    new = "".join(line + "\n" for line in _updated(sample, outputs[sample.command]))
                    text = text[:sample.start] + new + text[sample.end:]
            with open(os.path.join(REPO, doc), "w", encoding="utf-8") as f:
                f.write(text)
            print(f"updated {doc}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_docs.py --update   (QC_SLOW=1 also runs the SmolLM2-135M samples)")
    update_docs()


def test_cli_md_lists_every_target_of_qc_targets():
    from conftest import run_qc

    proc = run_qc("targets")
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines() if not line.startswith("(")]
    cli = _read_doc("docs/cli.md")
    listing = cli.split("$ qc targets\n", 1)[1].split("```", 1)[0]
    assert [line.split()[0] for line in listing.splitlines() if line and not line.startswith("(")] == names
    c_targets = [line.split()[0] for line in proc.stdout.splitlines() if line.split()[1:2] == ["c"]]
    c_backend = cli.split("### C backend", 1)[1].split("writes a directory", 1)[0]
    assert all(name in c_backend for name in c_targets), c_targets


def test_targets_md_cites_only_what_a_user_can_open():
    text = _read_doc("docs/targets.md")
    assert "../shared/" not in text and "note §" not in text
