"""Short fuzz runs of the ONNX frontend and the text IR parser (benchmarks/fuzz.py runs the long ones).

Every input either goes through import/parse, verify, print, re-parse and export, or fails with
a QCError that has a message: any other exception, or a case over its time limit, fails the test.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import fuzz

FUZZ = settings(max_examples=250, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    directory = str(tmp_path_factory.mktemp("fuzz"))
    fuzz.external_seed(directory)
    return directory


@FUZZ
@given(rnd=st.randoms(use_true_random=False))
def test_onnx_frontend_never_fails_other_than_qcerror(rnd: random.Random, model_dir: str):
    data = fuzz.onnx_case(rnd)
    problem = fuzz.run_case(lambda: fuzz.check_onnx(data, model_dir), timeout=20)
    assert problem is None, problem


@FUZZ
@given(rnd=st.randoms(use_true_random=False))
def test_external_data_model_mutations(rnd: random.Random, model_dir: str):
    data = fuzz.mutate_onnx(fuzz.external_seed(model_dir), rnd)
    problem = fuzz.run_case(lambda: fuzz.check_onnx(data, model_dir), timeout=20)
    assert problem is None, problem


@FUZZ
@given(rnd=st.randoms(use_true_random=False))
def test_text_parser_never_fails_other_than_qcerror(rnd: random.Random):
    text = fuzz.text_case(rnd)
    problem = fuzz.run_case(lambda: fuzz.check_text(text), timeout=20)
    assert problem is None, problem


def test_seeds_are_real_models_that_import():
    """The fuzzer starts from models that work, so mutations reach past the first check."""
    import qc

    seeds = fuzz.onnx_seeds()
    assert len(seeds) >= 50
    tally: dict[str, int] = {}
    for data in seeds[:30]:
        fuzz.run_case(lambda data=data: qc.import_onnx(__import__("onnx").load_from_string(data)), 20, tally)
    assert tally.get("ok", 0) >= 25, tally
    assert len(fuzz.text_seeds()) >= 40


def test_a_non_qc_exception_is_reported():
    """The harness itself: a ValueError is a failure, a QCError with a message is not, a hang is caught."""
    from qc.errors import QCError

    def raise_value_error():
        raise ValueError("boom")

    def raise_qc_error():
        raise QCError("bad input", where="x.onnx")

    def hang():
        while True:
            pass

    assert "ValueError: boom" in fuzz.run_case(raise_value_error, 5)
    assert fuzz.run_case(raise_qc_error, 5) is None
    assert fuzz.run_case(hang, 0.2).startswith("hang")


def test_fuzz_script_counts_cases():
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "fuzz.py"), "--target", "text",
                          "--cases", "40", "--seed", "5"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "target text: 40 cases (seeds 5..44), 0 failures, 0 crashed batches" in out.stdout
