"""Work on a Ray cluster whose machines share nothing but the network.

:class:`RayExecutor` is the :class:`qc.pm.Executor` of ``--ray ADDRESS``: what every task needs
(the model as a :class:`~qc.onnx.evaluator.PortableModel`, the samples, ...) goes into Ray's
object store once (``ray.put``) and each task carries only a reference to it, so a worker never
reads a path of this machine. A worker process builds its state from it once (an onnxruntime
session, a reference output) and keeps it for the next tasks of the same run. A task whose
worker died or that raised is submitted again (up to ``retries`` times; each retry is reported
on stderr and counted in :attr:`RayExecutor.retried`); after that the run stops with an error
naming what the task was working on. One progress bar counts the tasks of a map.

The retries are qc's own (each task is submitted with Ray's ``max_retries=0``) so that every one
can be reported with the layer or samples it was for; Ray's own retries are silent.
"""
from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, TextIO

from qc.errors import QCError

RETRIES = 3

# In a worker process: the state built from the last shared object ({key: state}, one entry).
_STATE: dict[str, Any] = {}


def _run(key: str, holder: list, setup: Callable[[Any], Any], fn: Callable[[Any, Any], Any],
         item: Any) -> tuple[Any, float, float]:
    """One task: the worker's state for ``key`` (built from the shared object on first use), then
    fn; returns (fn's result, the task's CPU seconds, the CPU seconds of building the state)."""
    t0 = time.process_time()
    state = _STATE.get(key)
    setup_cpu = 0.0
    if state is None:
        import ray

        _STATE.clear()  # the previous run's session goes before this one's is built
        state = _STATE[key] = setup(ray.get(holder[0]))
        setup_cpu = time.process_time() - t0
    out = fn(state, item)
    return out, time.process_time() - t0 - setup_cpu, setup_cpu


def _reason(e: BaseException) -> str:
    """A one-line account of a failed task."""
    import ray.exceptions as rex

    if isinstance(e, rex.RayTaskError):
        cause = e.cause if getattr(e, "cause", None) is not None else e
        text = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {text[-1] if text else ''}".rstrip(": ")
    if isinstance(e, (rex.WorkerCrashedError, rex.NodeDiedError, rex.LocalRayletDiedError)):
        return f"its worker died ({type(e).__name__})"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _nbytes(obj: Any) -> int:
    """Roughly the bytes of a shared object: its arrays, bytes and PortableModels, nested in tuples."""
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    n = getattr(obj, "nbytes", None)
    if isinstance(n, int):
        return n
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


class Shared:
    """An object put into the object store once, for the tasks of any number of maps."""

    def __init__(self, ref: Any, nbytes: int | None = None):
        self.key, self.ref, self.nbytes = uuid.uuid4().hex, ref, nbytes


class RayExecutor:
    """Runs tasks on the Ray cluster at ``address`` ('auto', host:port, ``ray://``...), or on a Ray
    instance started for this run ('local', ``jobs`` CPUs)."""

    def __init__(self, address: str, *, jobs: int = 1, retries: int = RETRIES, quiet: bool = False,
                 log: TextIO | None = None):
        self.address, self.jobs, self.retries, self.quiet = address, max(1, jobs), retries, quiet
        self.log = log if log is not None else sys.stderr
        self.retried: list[str] = []     # one line per retry: what, and why
        self.tasks = 0                   # tasks submitted (retries included)
        self.completed = 0
        self.task_cpu = 0.0              # CPU seconds of the completed tasks (their fn)
        self.setups = 0                  # worker states built (one per worker process and shared object)
        self.setup_cpu = 0.0             # CPU seconds building them (fetching the shared object included)
        self.shared_bytes = 0
        self.share_seconds = 0.0         # ray.put of the shared objects
        self._started = False
        self._remote: Any = None

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError:
            raise QCError("--ray needs the ray package", hint="pip install 'qc[ray]'") from None
        if not ray.is_initialized():
            local = self.address == "local"
            try:
                ray.init(address=None if local else self.address, log_to_driver=False, include_dashboard=False,
                         num_cpus=self.jobs if local else None, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise QCError(f"cannot connect to the Ray cluster at {self.address}: {e}",
                              hint="start one with `ray start --head`, or give --ray local") from None
            self._started = True
        if self._remote is None:
            self._remote = ray.remote(_run).options(max_retries=0, num_cpus=1)
        return ray

    @property
    def workers(self) -> int:
        """CPUs of the cluster (tasks that can run at once)."""
        ray = self._ray()
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def share(self, obj: Any) -> Shared:
        ray = self._ray()
        t0 = time.perf_counter()
        ref = ray.put(obj)
        self.share_seconds += time.perf_counter() - t0
        nbytes = _nbytes(obj)
        self.shared_bytes += nbytes
        return Shared(ref, nbytes)

    def map(self, setup: Callable[[Any], Any], fn: Callable[[Any, Any], Any], shared: Any,
            items: list[Any], *, describe: Callable[[int], str], desc: str = "") -> list[Any]:
        ray = self._ray()
        handle = shared if isinstance(shared, Shared) else self.share(shared)
        attempts = [0] * len(items)
        pending: dict[Any, int] = {}

        def submit(i: int) -> None:
            attempts[i] += 1
            self.tasks += 1
            # the reference inside a list: not resolved for the task; the worker fetches it once
            pending[self._remote.remote(handle.key, [handle.ref], setup, fn, items[i])] = i

        for i in range(len(items)):
            submit(i)
        results: list[Any] = [None] * len(items)
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=desc or "ray", unit="task", file=sys.stderr, leave=False,
                   disable=self.quiet or not sys.stderr.isatty())
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    i = pending.pop(ref)
                    try:
                        results[i], cpu, setup_cpu = ray.get(ref)
                    except Exception as e:  # a RayError: the task raised, or its worker / node died
                        reason = _reason(e)
                        if attempts[i] > self.retries:
                            raise QCError(f"ray: {describe(i)} failed {attempts[i]} times, the last: {reason}",
                                          hint="see the worker logs in the Ray session directory "
                                               "(/tmp/ray/session_latest/logs on the node)") from None
                        line = f"{describe(i)}: {reason}; retrying ({attempts[i]} of {self.retries})"
                        self.retried.append(line)
                        self.log.write(f"qc: ray: {line}\n")
                        self.log.flush()
                        submit(i)
                        continue
                    self.completed += 1
                    self.task_cpu += cpu
                    if setup_cpu:
                        self.setups += 1
                        self.setup_cpu += setup_cpu
                    bar.update(1)
        finally:
            bar.close()
            for ref in pending:  # after an error: the other tasks are not waited for
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # finished meanwhile, or its worker is gone
                    pass
        return results

    def summary(self) -> str:
        """What ran: tasks, CPU seconds per task, the worker states built, the object store's share;
        and how many tasks were retried (the run completed: it would have raised otherwise)."""
        per = self.task_cpu / self.completed if self.completed else 0.0
        text = (f"ray: {self.completed} tasks, {per:.3f} CPU s per task; {self.setups} worker state(s) built "
                f"({self.setup_cpu:.1f} CPU s in all); {self.shared_bytes / 1e6:.1f} MB put into the object "
                f"store in {self.share_seconds:.2f} s\n")
        if self.retried:
            text += f"ray: {len(self.retried)} task(s) retried after a failure; every task completed\n"
        return text

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False
            self._remote = None
