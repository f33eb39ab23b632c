"""Conformance harness: ONNX -> qc IR -> ONNX must not change what onnxruntime computes.

Every node test case shipped with ``onnx`` (``onnx.backend.test.case.node``) and the nine
"light" zoo models are run through onnxruntime (CPU, graph optimizations off) before and after
a round trip through qc; the outputs must be bit-identical. Cases that onnxruntime cannot run
in their original form are reported as skipped, with onnxruntime's reason.

Run ``python -m qc.testing.conformance [--via onnx|text|both] [--filter SUBSTR] [-v]``.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, numpy_helper

from qc.onnx.evaluator import ort_session

Feeds = dict[str, Any]
Via = Callable[[ModelProto], ModelProto]

PASS, FAIL, SKIP_ORT = "pass", "fail", "skip-ort"

# Tensor element types that onnxruntime's Python API exchanges as plain numpy arrays.
_ORT_NUMPY_TYPES = {
    "float", "double", "float16", "int8", "uint8", "int16", "uint16", "int32", "uint32",
    "int64", "uint64", "bool", "string",
}


@dataclass
class Result:
    """The outcome of one case: ``status`` is "pass", "fail" or "skip-ort"."""

    name: str
    status: str
    reason: str = ""
    via: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def __str__(self) -> str:
        text = f"{self.name}: {self.status}"
        return f"{text}: {self.reason}" if self.reason else text


@dataclass
class Reference:
    """What the original model gives: outputs per feed set, or why onnxruntime cannot run it."""

    outputs: list[list[Any]] = field(default_factory=list)
    interface: list[tuple[str, str, str, Any]] = field(default_factory=list)
    ort_error: str | None = None
    checker_ok: bool = True


# -- running onnxruntime -----------------------------------------------------------------

def run_onnx(model_proto: ModelProto, feeds: Feeds) -> list[Any]:
    """Run ``model_proto`` on onnxruntime CPU with graph optimizations disabled.

    ``feeds`` maps input names to numpy arrays (bf16/float8/int4 as ml_dtypes arrays), lists
    of arrays (sequences) or None (an absent optional). Tensor outputs come back as numpy
    arrays, including the types onnxruntime's Python API has no numpy type for.
    """
    return _run(_session(model_proto), feeds)


def _session(model_proto: ModelProto) -> Any:
    return ort_session(model_proto)


def _interface(session: Any) -> list[tuple[str, str, str, Any]]:
    """Inputs and outputs as onnxruntime reports them: (kind, name, type, shape)."""
    return ([("input", a.name, a.type, a.shape) for a in session.get_inputs()]
            + [("output", a.name, a.type, a.shape) for a in session.get_outputs()])


def _run(session: Any, feeds: Feeds) -> list[Any]:
    import onnxruntime as ort

    inputs = {k: _to_ort(v) for k, v in feeds.items() if v is not None}
    if all(_numpy_friendly(o.type) for o in session.get_outputs()):
        return list(session.run(None, inputs))
    values = {k: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(np.asarray(v))
              for k, v in inputs.items()}
    return [_from_ortvalue(v) for v in session.run_with_ort_values(None, values)]


def _numpy_friendly(ort_type: str) -> bool:
    """Whether onnxruntime returns an output of this type through ``InferenceSession.run``."""
    if not ort_type.startswith("tensor("):
        return True  # sequences, maps, optionals: the Python API converts them
    return ort_type[len("tensor("):-1] in _ORT_NUMPY_TYPES


def _to_ort(value: Any) -> Any:
    """A feed value in a form onnxruntime accepts (OrtValues for types numpy lacks)."""
    if isinstance(value, list):
        return [_to_ort(v) for v in value]
    array = np.asarray(value)
    if array.dtype.type.__module__ == "numpy":  # not an ml_dtypes type (bf16, float8, int4, ...)
        return array
    return _exotic_ortvalue(array)


def _exotic_ortvalue(array: np.ndarray) -> Any:
    """An OrtValue holding a bf16/float8/int4/... array, packed as ONNX stores it."""
    import onnxruntime as ort

    proto = numpy_helper.from_array(array)
    raw = proto.raw_data
    c = ort.capi._pybind_state
    device = c.OrtDevice(c.OrtDevice.cpu(), c.OrtDevice.default_memory(), 0)
    value = c.OrtValue.ortvalue_from_shape_and_onnx_type(list(array.shape), proto.data_type, device)
    if len(raw) != value.tensor_size_in_bytes():
        raise ValueError(f"packed size {len(raw)} != onnxruntime's {value.tensor_size_in_bytes()}")
    ctypes.memmove(value.data_ptr(), raw, len(raw))
    return ort.OrtValue(value)


def _from_ortvalue(value: Any) -> Any:
    """An output OrtValue as numpy; types numpy lacks are decoded from their raw bytes."""
    if not value.is_tensor():
        return value.numpy()
    if value.data_type()[len("tensor("):-1] in _ORT_NUMPY_TYPES:
        return value.numpy()
    raw = ctypes.string_at(value.data_ptr(), value.tensor_size_in_bytes()) if value.tensor_size_in_bytes() else b""
    proto = TensorProto(data_type=value.element_type(), dims=value.shape(), raw_data=raw)
    return numpy_helper.to_array(proto)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


# -- the cases ---------------------------------------------------------------------------

def node_cases() -> Iterator[tuple[str, ModelProto, list[Feeds]]]:
    """Every ``onnx.backend.test.case.node`` test case: (name, model, feed sets)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cases = collect_testcases()
    for case in cases:
        names = [i.name for i in case.model.graph.input]
        feeds = [_case_feeds(names, inputs) for inputs, _ in case.data_sets or []]
        yield case.name, case.model, feeds


def _case_feeds(names: Sequence[str], inputs: Sequence[Any]) -> Feeds:
    """Data-set inputs by graph input name (a test case lists values for present inputs only)."""
    return {name: _feed_value(value) for name, value in zip(names, inputs)}


def _feed_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, (list, tuple)):
        return [_feed_value(v) for v in value]
    return np.asarray(value)


def light_models(seed: int = 0) -> Iterator[tuple[str, ModelProto, Feeds]]:
    """The light zoo models shipped with onnx, with seeded random float32 feeds."""
    directory = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    for path in sorted(glob.glob(os.path.join(directory, "*.onnx"))):
        model = onnx.load(path)
        name = os.path.splitext(os.path.basename(path))[0]
        yield name, model, random_feeds(model, seed)


def random_feeds(model: ModelProto, seed: int = 0) -> Feeds:
    """Seeded standard-normal float32 data for every graph input that is not an initializer."""
    rng = np.random.default_rng(seed)
    consts = {i.name for i in model.graph.initializer} | {s.values.name for s in model.graph.sparse_initializer}
    feeds: Feeds = {}
    for vi in model.graph.input:
        if vi.name in consts:
            continue
        dims = vi.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


# -- round trips -------------------------------------------------------------------------

def via_onnx(model: ModelProto) -> ModelProto:
    """ONNX -> qc IR -> ONNX."""
    from qc.frontend import import_onnx
    from qc.onnx.writer import export_onnx

    return export_onnx(import_onnx(model))


def via_text(model: ModelProto) -> ModelProto:
    """ONNX -> qc IR -> text IR (weights inline) -> qc IR -> ONNX."""
    from qc.frontend import import_onnx
    from qc.ir.parser import parse_ir
    from qc.ir.printer import print_ir
    from qc.onnx.writer import export_onnx

    text = print_ir(import_onnx(model), elide_above=None)
    return export_onnx(parse_ir(text))


VIAS: dict[str, Via] = {"onnx": via_onnx, "text": via_text}


def reference(model: ModelProto, feeds: Feeds | list[Feeds]) -> Reference:
    """Run the original model once per feed set and full-check it."""
    ref = Reference()
    try:
        session = _session(model)
        ref.interface = _interface(session)
        ref.outputs = [_run(session, f) for f in _feed_sets(feeds)]
    except Exception as e:  # onnxruntime raises several exception types
        ref.ort_error = _first_line(e)
    ref.checker_ok = _checker_error(model) is None
    return ref


def check_roundtrip(name: str, model: ModelProto, feeds: Feeds | list[Feeds], via: Via, *,
                    ref: Reference | None = None, via_name: str = "") -> Result:
    """Round-trip ``model`` through ``via`` and compare onnxruntime's outputs bit for bit.

    The exported model must also show onnxruntime the same inputs and outputs (names, types,
    shapes including dim names), and pass the full onnx.checker when the original does.

    ``feeds`` is one feed dict or a list of them; ``ref`` (from :func:`reference`) saves
    re-running the original when several round trips are checked.
    """
    ref = reference(model, feeds) if ref is None else ref
    if ref.ort_error is not None:
        return Result(name, SKIP_ORT, ref.ort_error, via_name)
    try:
        exported = via(model)
    except Exception as e:
        return Result(name, FAIL, f"qc raised {type(e).__name__}: {_first_line(e)}", via_name)
    if ref.checker_ok:
        error = _checker_error(exported)
        if error is not None:
            return Result(name, FAIL, f"exported model fails onnx.checker: {error}", via_name)
    try:
        session = _session(exported)
    except Exception as e:
        return Result(name, FAIL, f"onnxruntime rejects the exported model: {_first_line(e)}", via_name)
    diff = _diff_interface(ref.interface, _interface(session))
    if diff is not None:
        return Result(name, FAIL, diff, via_name)
    for i, (f, expected) in enumerate(zip(_feed_sets(feeds), ref.outputs)):
        try:
            got = _run(session, f)
        except Exception as e:
            return Result(name, FAIL, f"onnxruntime fails running the exported model: {_first_line(e)}", via_name)
        diff = _diff_outputs(expected, got, [o.name for o in model.graph.output])
        if diff is not None:
            suffix = f" (data set {i})" if len(ref.outputs) > 1 else ""
            return Result(name, FAIL, diff + suffix, via_name)
    return Result(name, PASS, "", via_name)


def _feed_sets(feeds: Feeds | list[Feeds]) -> list[Feeds]:
    return [feeds] if isinstance(feeds, dict) else list(feeds)


def _checker_error(model: ModelProto) -> str | None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        return _first_line(e)
    return None


def _diff_interface(expected: list[tuple], got: list[tuple]) -> str | None:
    for a, b in zip(expected, got):
        if a != b:
            renamed = f" named '{b[1]}'" if a[1] != b[1] else ""
            return f"{a[0]} '{a[1]}' is {b[2]} {b[3]}{renamed}, expected {a[2]} {a[3]}"
    if len(expected) != len(got):
        return f"{len(got)} inputs and outputs, expected {len(expected)}"
    return None


def _diff_outputs(expected: list[Any], got: list[Any], names: list[str]) -> str | None:
    if len(expected) != len(got):
        return f"{len(got)} outputs, expected {len(expected)}"
    for i, (a, b) in enumerate(zip(expected, got)):
        diff = _diff(a, b)
        if diff is not None:
            name = names[i] if i < len(names) else str(i)
            return f"output {i} '{name}' differs: {diff}"
    return None


def _diff(a: Any, b: Any) -> str | None:
    """None when ``a`` and ``b`` are bit-identical, else what differs."""
    if a is None or b is None:
        return None if a is None and b is None else f"{_kind(b)} instead of {_kind(a)}"
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not isinstance(a, (list, tuple)) or not isinstance(b, (list, tuple)):
            return f"{_kind(b)} instead of {_kind(a)}"
        if len(a) != len(b):
            return f"sequence of {len(b)} instead of {len(a)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _diff(x, y)
            if d is not None:
                return f"[{i}]: {d}"
        return None
    if isinstance(a, dict) or isinstance(b, dict):
        if not isinstance(a, dict) or not isinstance(b, dict) or a.keys() != b.keys():
            return "map keys differ"
        for k in a:
            d = _diff(a[k], b[k])
            if d is not None:
                return f"[{k!r}]: {d}"
        return None
    return _diff_arrays(np.asarray(a), np.asarray(b))


def _diff_arrays(a: np.ndarray, b: np.ndarray) -> str | None:
    if a.dtype != b.dtype:
        return f"dtype {b.dtype} instead of {a.dtype}"
    if a.shape != b.shape:
        return f"shape {b.shape} instead of {a.shape}"
    if a.dtype == object:
        same = a.tolist() == b.tolist()
    else:
        same = np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    if same:
        return None
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    if a.dtype == object:
        bad = [i for i in range(flat_a.size) if flat_a[i] != flat_b[i]]
    else:
        width = a.dtype.itemsize
        va, vb = flat_a.view(f"V{width}"), flat_b.view(f"V{width}")
        bad = np.flatnonzero(va != vb).tolist()
    i = bad[0] if bad else 0
    return f"{len(bad)} of {a.size} elements differ, first at flat index {i}: {flat_b[i]!r} instead of {flat_a[i]!r}"


def _kind(x: Any) -> str:
    if x is None:
        return "None"
    if isinstance(x, (list, tuple)):
        return "a sequence"
    if isinstance(x, dict):
        return "a map"
    return "a tensor"


# -- the driver --------------------------------------------------------------------------

@dataclass
class Tally:
    """Counts for one set of cases under one round trip."""

    set_name: str
    via: str
    results: list[Result] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def runnable(self) -> int:
        return len(self.results) - self.count(SKIP_ORT)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.status == FAIL]

    def summary(self) -> str:
        return (f"{self.set_name} via {self.via}: {len(self.results)} cases, runnable {self.runnable}, "
                f"passed {self.count(PASS)}, failed {self.count(FAIL)}, skipped-by-ORT {self.count(SKIP_ORT)}")


def run_set(set_name: str, cases: Iterable[tuple[str, ModelProto, Any]], vias: dict[str, Via],
            name_filter: str | None = None, on_result: Callable[[Result], None] | None = None) -> list[Tally]:
    """Check every case of one set under each round trip; the original runs once per case."""
    tallies = {v: Tally(set_name, v) for v in vias}
    for name, model, feeds in cases:
        if name_filter and name_filter not in name:
            continue
        ref = reference(model, feeds)
        for via_name, via in vias.items():
            r = check_roundtrip(name, model, feeds, via, ref=ref, via_name=via_name)
            tallies[via_name].results.append(r)
            if on_result is not None:
                on_result(r)
    return list(tallies.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qc.testing.conformance",
                                     description="ONNX -> qc IR -> ONNX conformance against onnxruntime")
    parser.add_argument("--via", choices=["onnx", "text", "both"], default="onnx",
                        help="round trip through an ONNX export, the text IR, or both (default: onnx)")
    parser.add_argument("--filter", metavar="SUBSTR", help="only cases whose name contains SUBSTR")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case's result")
    args = parser.parse_args(argv)

    names = ["onnx", "text"] if args.via == "both" else [args.via]
    vias = {n: VIAS[n] for n in names}
    show = (lambda r: print(f"  [{r.via}] {r}", flush=True)) if args.verbose else None
    start = time.perf_counter()
    tallies = run_set("node cases", node_cases(), vias, args.filter, show)
    tallies += run_set("light models", light_models(), vias, args.filter, show)
    failed = False
    for t in tallies:
        print(t.summary())
        for r in t.failures:
            failed = True
            print(f"  FAIL {r.name}: {r.reason}")
    print(f"({time.perf_counter() - start:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
