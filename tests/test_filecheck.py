"""Runs the lit/FileCheck pass tests in tests/filecheck as one pytest item."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_filecheck_suite():
    # `python -m lit` does not work (the lit package has no __main__): call its entry point
    proc = subprocess.run([sys.executable, "-c", "import sys, lit.main; sys.exit(lit.main.main())",
                           "-v", os.path.join(HERE, "filecheck")], capture_output=True, text=True)
    assert proc.returncode == 0, f"lit failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
