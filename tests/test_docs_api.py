"""docs/api.md's example runs exactly as written (so the documented library API cannot drift)."""
import contextlib
import io
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def _example() -> str:
    text = DOC.read_text()
    section = text[text.index("## Example"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_api_example_runs_and_prints_what_the_doc_says():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_example(), str(DOC), "exec"), {"__name__": "api_example"})
    lines = out.getvalue().splitlines()
    assert lines[0] == "['legalize', 'check-kernels{fallback=allow}']"
    assert lines[1] == "[]"
    assert lines[2] == "['MatMul: a f16, w f16', 'MatMul: a i8 static, w i8 per-channel']"
    assert lines[3].startswith("SQNR vs float: ")
    assert lines[4] == "['model.c', 'model.cmake', 'model.h', 'model.onnx', 'model_weights.c']"
