"""``qc analyze`` and ``qc compile --accuracy`` on a real two-node Ray cluster (issue 20).

The cluster (tests/ray_cluster.py) runs in its own network namespace (only loopback: nothing
leaves the machine) and PID namespace (every process it starts dies with it); the second node has
a tmpfs over the test's directory, so it cannot read the model, the samples or any temporary
file of the driver or the head: the work must travel through Ray's object store. The head has no
CPUs, so every task runs on the second node. The results must equal those of a local run: the
same ranking and ranges (so the same calibration statistics), the same float16 layers and the same
written model bytes; a worker killed mid-run is retried and the run says so.

Skipped when ray or unshare is missing, unless QC_REQUIRE_RAY=1 (CI), where that fails.
"""
from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import REPO, run_qc

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIRE = os.environ.get("QC_REQUIRE_RAY") == "1"
NS = ["--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
CALIB = ["--quant", "w8a8", "--calib-text", "licenses", "--samples", "8", "--seq-len", "32", "--holdout", "2"]
ACCURACY = ["--accuracy", "cosine>=0.9999", "--eval-text", "licenses", "--eval-samples", "4"]


def _skip(reason: str):
    if REQUIRE:
        pytest.fail(f"QC_REQUIRE_RAY=1: {reason}")
    pytest.skip(reason)


def _namespaces() -> list[str]:
    """The unshare command that gives a network + PID namespace where lo comes up and a nested mount
    namespace can mount a tmpfs (as root: no user namespace; else a user namespace mapping us to root)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        _skip("needs unshare and ip (util-linux, iproute2)")
    probe = ('ip link set lo up && d=$(mktemp -d) && unshare --mount mount -t tmpfs tmpfs "$d"; rc=$?; '
             'rmdir "$d"; exit $rc')
    tried = []
    for extra in ([], ["--user", "--map-root-user"]):
        cmd = ["unshare", *extra, *NS]
        r = subprocess.run([*cmd, "sh", "-c", probe], capture_output=True, text=True, timeout=30)
        if r.returncode == 0:
            return cmd
        tried.append(f"{' '.join(cmd)}: {r.stderr.strip()}")
    _skip("cannot make the namespaces: " + "; ".join(tried))
    return []


def _read_line(proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the cluster helper exited ({proc.poll()})")
            return json.loads(line)
        if proc.poll() is not None:
            raise RuntimeError(f"the cluster helper exited ({proc.returncode})")
    raise TimeoutError(f"no answer from the cluster helper in {timeout:.0f} s")


def _pid_namespace_members(ns: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink(f"/proc/{d}/ns/pid") == ns:
                    out.append(int(d))
            except OSError:
                pass
    return out


class Cluster:
    def __init__(self, proc: subprocess.Popen, address: str, base: str):
        self.proc, self.address, self.base = proc, address, base

    def run(self, *args: str, kill: str | None = None, python: bool = False) -> dict:
        """``qc ARGS`` (``python ARGS``) run inside the cluster's namespaces (a driver that sees only loopback)."""
        argv = [sys.executable, *args] if python else [sys.executable, "-m", "qc.cli", *args]
        req = {"argv": argv, "kill": kill, "timeout": 240}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return _read_line(self.proc, 260)


@pytest.fixture(scope="module")
def cluster():
    try:
        import ray  # noqa: F401
    except ImportError:
        _skip("ray is not installed (pip install 'qc[ray]')")
    cmd = _namespaces()
    base = tempfile.mkdtemp(prefix="qcray-", dir="/tmp")  # short: Ray's socket paths live under it
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    helper = subprocess.Popen([*cmd, sys.executable, os.path.join(HERE, "ray_cluster.py"), base], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    ns = None
    try:
        for _ in range(100):  # unshare --fork: the helper is its child, the first process of the namespace
            try:
                with open(f"/proc/{helper.pid}/task/{helper.pid}/children") as f:
                    kids = f.read().split()
                if kids:
                    ns = os.readlink(f"/proc/{kids[0]}/ns/pid")
                    break
            except OSError:
                pass
            time.sleep(0.05)
        ready = _read_line(helper, 150)
        yield Cluster(helper, ready["address"], base)
    finally:
        try:
            helper.stdin.close()  # the helper stops the nodes it started (SIGTERM, then SIGKILL) and exits
            helper.wait(40)
        except (subprocess.TimeoutExpired, OSError):
            helper.send_signal(signal.SIGKILL)  # --kill-child: the namespace's first process goes too
            helper.wait(10)
        deadline = time.monotonic() + 10
        while ns and _pid_namespace_members(ns) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _pid_namespace_members(ns) if ns else []
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"processes of the Ray cluster left after the test: {left}"


@pytest.fixture(scope="module")
def minilm(cluster):
    d = os.path.join(cluster.base, "in")
    os.makedirs(d)
    path = os.path.join(d, "minilm.onnx")
    layers = os.environ.get("QC_RAY_MINILM_LAYERS", "2")  # 2 in CI; 6 is the whole model
    r = run_qc("models", "build", "minilm-l6", "--layers", layers, "-o", path)
    assert r.returncode == 0, r.stderr
    return path


def _ok(r: dict) -> dict:
    assert r["rc"] == 0, r["stderr"][-3000:]
    return r


def _json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def test_two_node_cluster_gives_the_local_results(cluster, minilm):
    out = os.path.join(cluster.base, "out")
    os.makedirs(out)
    local = run_qc("analyze", minilm, *CALIB, "--json", f"{out}/local.json")
    assert local.returncode == 0, local.stderr
    remote = _ok(cluster.run("analyze", minilm, *CALIB, "--json", f"{out}/ray.json", "--ray", cluster.address))
    assert f"ray {cluster.address}" in remote["stdout"]
    a, b = _json(f"{out}/local.json"), _json(f"{out}/ray.json")
    assert [r["name"] for r in a["ranking"]] == [r["name"] for r in b["ranking"]]
    assert a == b  # scores, activation ranges (calibrated on the cluster) and weight ranges alike

    args = ["compile", minilm, "--target", "x86-avx2", *CALIB, *ACCURACY, "--quiet"]
    local = run_qc(*args, "-o", f"{out}/local.onnx", "--report-json", f"{out}/local-report.json")
    assert local.returncode == 0, local.stderr
    _ok(cluster.run(*args, "-o", f"{out}/ray.onnx", "--report-json", f"{out}/ray-report.json",
                    "--ray", cluster.address))
    ra, rb = _json(f"{out}/local-report.json")["accuracy_search"], _json(f"{out}/ray-report.json")["accuracy_search"]
    assert ra["float16_layers"] == rb["float16_layers"] and ra["float16_layers"]
    assert ra["tried"] == rb["tried"] and ra["score"] == rb["score"]
    with open(f"{out}/local.onnx", "rb") as f, open(f"{out}/ray.onnx", "rb") as g:
        assert f.read() == g.read()


def test_a_killed_worker_is_retried_and_reported(cluster, minilm):
    out = os.path.join(cluster.base, "out-kill")
    os.makedirs(out)
    local = run_qc("analyze", minilm, *CALIB, "--json", f"{out}/local.json")
    assert local.returncode == 0, local.stderr
    r = _ok(cluster.run("analyze", minilm, *CALIB, "--json", f"{out}/ray.json", "--ray", cluster.address,
                        kill="ray::_run"))
    assert r["killed"], "no Ray task was seen running"
    print("".join(line + "\n" for line in (r["stderr"] + r["stdout"]).splitlines() if "ray:" in line))
    assert "its worker died" in r["stderr"] and "retrying (1 of 3)" in r["stderr"], r["stderr"][-3000:]
    assert "task(s) retried after a failure; every task completed" in r["stdout"]
    assert _json(f"{out}/local.json") == _json(f"{out}/ray.json")


def test_a_task_that_keeps_failing_is_an_error_naming_it(cluster):
    code = f"""
import operator, sys
from qc.errors import QCError
from qc.tools.cluster import RayExecutor
ex = RayExecutor({cluster.address!r}, retries=1)
print(ex.map(abs, operator.truediv, -6.0, [1.0, 2.0], describe=lambda i: f"item {{i}}"))
try:
    ex.map(abs, operator.truediv, 6.0, [1.0, 0.0, 3.0], describe=lambda i: f"layer 'x{{i}}' alone")
except QCError as e:
    print("error:", e)
import os, ray
@ray.remote
def sees(path):
    return os.path.exists(path), ray.get_runtime_context().get_node_id() == here
here = ray.get_runtime_context().get_node_id()
print("worker sees the head's temp dir, runs on the driver's node:", ray.get(sees.remote({cluster.base + "/head"!r})))
"""
    r = cluster.run("-c", code, python=True)
    assert r["rc"] == 0, r["stderr"][-3000:]
    assert "[6.0, 3.0]" in r["stdout"]
    assert ("error: ray: layer 'x1' alone failed 2 times, the last: ZeroDivisionError: float division by zero"
            in r["stdout"]), r["stdout"]
    assert "layer 'x1' alone: ZeroDivisionError: float division by zero; retrying (1 of 1)" in r["stderr"]
    # the isolation the other tests rely on: tasks run on the second node, which cannot see BASE's files
    assert "worker sees the head's temp dir, runs on the driver's node: (False, False)" in r["stdout"], r["stdout"]
