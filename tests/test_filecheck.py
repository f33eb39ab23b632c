"""Runs the lit/FileCheck pass tests in tests/filecheck as one pytest item."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_filecheck_suite():
    proc = subprocess.run([sys.executable, "-m", "lit", "-v", os.path.join(HERE, "filecheck")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"lit failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
