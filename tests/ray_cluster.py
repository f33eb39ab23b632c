"""A two-node Ray cluster on loopback, for tests/test_ray_cluster.py. Not a test module.

Run as the first process of its own network and PID namespaces (the fixture starts it under
``unshare --net --pid --fork --mount-proc --kill-child``), so the cluster sends nothing beyond
loopback and every process it starts dies with it::

    python tests/ray_cluster.py BASE

It brings ``lo`` up, starts a head node (``ray start --head --block``, no CPUs, temp dir
BASE/head) and a second node in its own mount namespace with a tmpfs over BASE (its HOME, TMPDIR
and ``--temp-dir`` are in that tmpfs): the second node cannot see the head's or the driver's files,
all of which are under BASE. It prints one JSON line ``{"address": ...}`` when both nodes are up,
then runs the commands it reads from stdin (JSON lines: ``{"argv": [...], "env": {...},
"kill": "ray::_run"}``; ``kill``: SIGKILL the first process of that title, once, while the
command runs) and answers each with a JSON line (rc, stdout, stderr, killed). On end of input it
stops the nodes it started by their pids (SIGTERM, then SIGKILL after 10 s), then SIGKILLs any
process left in its PID namespace, and exits. The environment gives the token (RAY_AUTH_MODE,
RAY_AUTH_TOKEN); ~/.ray is never read (HOME is under BASE).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

PORT = 6379


def _log(msg: str) -> None:
    sys.stderr.write(f"ray_cluster: {msg}\n")
    sys.stderr.flush()


def _ray(*args: str) -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts", *args]


def _alive_nodes(address: str, env: dict) -> int:
    code = (f"import ray; ray.init(address={address!r}, log_to_driver=False, configure_logging=False); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    try:
        return int(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


def _titles() -> dict[int, str]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    out[int(d)] = f.read().split(b"\0")[0].decode(errors="replace")
            except OSError:
                pass
    return out


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    me = os.getpid()
    for pid in _titles():
        if pid != me:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def main() -> int:
    base = os.path.abspath(sys.argv[1])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    address = f"127.0.0.1:{PORT}"
    env = dict(os.environ, HOME=os.path.join(base, "home-head"), TMPDIR=os.path.join(base, "tmp-head"),
               RAY_USAGE_STATS_ENABLED="0")
    for d in (env["HOME"], env["TMPDIR"]):
        os.makedirs(d, exist_ok=True)
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--object-store-memory", str(200 << 20),
              "--block"]
    procs: list[subprocess.Popen] = []
    try:
        with open(os.path.join(base, "head.log"), "wb") as log:
            procs.append(subprocess.Popen(_ray("start", "--head", "--port", str(PORT), "--num-cpus", "0",
                                               "--include-dashboard", "false", "--temp-dir",
                                               os.path.join(base, "head"), *common),
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
        for _ in range(120):
            if _alive_nodes(address, env) >= 1:
                break
            time.sleep(0.5)
        else:
            raise SystemExit("the head node did not come up (see head.log)")
        # the second node: a tmpfs over BASE, its own HOME / TMPDIR / temp dir in there
        inner = (f'mount -t tmpfs -o size=64m tmpfs "{base}" && mkdir -p "{base}/home" "{base}/tmp" && '
                 f'HOME="{base}/home" TMPDIR="{base}/tmp" exec "$@" > "{base}/tmp/node.log" 2>&1')
        worker = _ray("start", "--address", address, "--num-cpus", "2", "--temp-dir",
                      os.path.join(base, "node2"), *common)
        procs.append(subprocess.Popen(["unshare", "--mount", "sh", "-c", inner, "sh", *worker], env=env))
        for _ in range(120):
            if _alive_nodes(address, env) >= 2:
                break
            if procs[1].poll() is not None:
                raise SystemExit(f"the second node exited with {procs[1].returncode}")
            time.sleep(0.5)
        else:
            raise SystemExit("the second node did not join")
        print(json.dumps({"address": address}), flush=True)
        for line in sys.stdin:
            req = json.loads(line)
            cmd_env = dict(env, **req.get("env", {}))
            p = subprocess.Popen(req["argv"], env=cmd_env, cwd=req.get("cwd", base), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            killed = None
            if req.get("kill"):
                killed = _kill_first(req["kill"], p)
            out, err = p.communicate(timeout=req.get("timeout", 300))
            print(json.dumps({"rc": p.returncode, "stdout": out, "stderr": err, "killed": killed}), flush=True)
    finally:
        _stop(procs)
    return 0


def _kill_first(title: str, p: subprocess.Popen) -> int | None:
    """SIGKILL the first process whose title starts with ``title`` (a Ray worker running a task)."""
    while p.poll() is None:
        for pid, t in _titles().items():
            if t.startswith(title):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    continue
                return pid
        time.sleep(0.005)
    return None


if __name__ == "__main__":
    sys.exit(main())
