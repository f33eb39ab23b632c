"""The ``fold-constants`` pass; its docstring (``qc passes fold-constants``) lists every rewrite."""
from __future__ import annotations

import ctypes
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from qc.ir.core import Graph, Module, Op, Value
from qc.ir.dtypes import DType
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType
from qc.onnx.evaluator import ort_session
from qc.pm import Pass, PassContext, register_pass

from ._util import NONDETERMINISTIC, can_hold_consts, constant_consts, erase_op, graphs, opsets_for, payload_key

_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
_NODE_NAME = re.compile(r"__qcfold(\d+)(?![\d_])")  # our node names; result names are __qcfold<i>_<j>


@register_pass("fold-constants")
@dataclass(frozen=True)
class FoldConstants(Pass):
    """fold-constants: evaluate ops whose inputs are all constants and replace their results by consts.

    Rewrites::

        const @a : f32[2] = dense[1.0, 2.0]
        %c = onnx.Constant() {value = f32[] dense[2.0]}
        %t = onnx.Mul(@a, %c)
        %y = onnx.Add(%x, %t)
            ->  const @t : f32[2] = dense[2.0, 4.0]
                %y = onnx.Add(%x, @t)

        %k = onnx.Constant() {value_ints = [1, -1]}   ->  const @k : i64[2] = dense[1, -1]   (fold-constant-ops)

        %s = onnx.ConstantOfShape(@shape)   (result over max-size elements)   ->  unchanged

        in a function body (ONNX functions have no initializers), and in subgraphs of models
        of IR version < 4 (where every initializer must be a graph input):
        %t = onnx.Add(%c1, %c2)   (%c1, %c2 from Constant ops)
            ->  %t = onnx.Constant() {value = ...}

    Equal results folded in several subgraphs become one const of their common enclosing graph
    (not one copy per branch)::

        If then: %t1 = onnx.Transpose(@W)    else: %t2 = onnx.Transpose(@W)
            ->  const @t1 (main graph), read by both branches

    Never folded: DequantizeLinear (a quantized weight stays quantized: folding it would store the
    weights dequantized, 2-8x larger, and lose the quantization for the backends), ops with
    subgraphs (If/Loop/Scan; ops *inside* subgraphs are folded, their
    results become consts of that subgraph), non-deterministic ops (RandomNormal*,
    RandomUniform*, Multinomial, Bernoulli), ops of domains other than ai.onnx, ai.onnx.ml and
    com.microsoft, calls of local functions, ops with attribute references, ops with a result
    that is not a tensor (sequences, optionals), results over ``max-size`` elements, and results
    whose dtype or static shape disagrees with the type the IR declares, float16 ops that
    onnxruntime's CPU provider has no float16 kernel for (it computes them in float32 without
    rounding between such ops, which a float16 const could not reproduce) and the ops computed
    from them. A const that is also a
    graph input (an ONNX initializer a caller may override, IR version >= 4) is not a constant.

    Evaluation is onnxruntime's, never re-implemented: every foldable op of one opset context
    (the main graph and its subgraphs; each function body) goes into one small ONNX model, with
    the constant inputs as initializers and the results as outputs, run once with graph
    optimizations disabled. The folded values are therefore bit-identical to what onnxruntime
    computes for the unfolded model. (Ops downstream may still round differently: onnxruntime
    pre-packs a MatMul/Gemm weight that is an initializer, which changes its summation order.)
    Ops onnxruntime cannot load or run are moved, with the ops that depend on them, to a second
    model run by ``onnx.reference.ReferenceEvaluator``; ops that fail there too stay unfolded.
    Folded ops whose results become unused are removed; the consts they read are left for
    ``dce``. In models of IR version < 4 new main-graph consts are also listed as graph
    inputs, as that IR version requires.
    """

    max_size: int = 1 << 20
    """largest folded result, in elements (bigger results, e.g. of ConstantOfShape/Expand/Tile, stay ops)"""
    max_growth: int = 1 << 16
    """largest result, in elements, that may exceed the op's constant inputs by 4x or more:
    folding ConstantOfShape/Expand/Tile/Range into stored tensors grows the model file"""
    fold_constant_ops: bool = True
    """turn onnx.Constant ops into consts (where the graph can hold consts, see above)"""

    def run(self, module: Module, ctx: PassContext) -> bool:
        constants = constant_consts(module)
        local_functions = {(f.domain, f.name) for f in module.functions}
        groups: dict[int, tuple[object, list[Op]]] = {}
        known: dict[int, Tensor | None] = {}  # id(value) -> data for sources; None for op results to compute
        sources: dict[int, Tensor] = {}  # Constant(value=...) results: known without evaluating
        for g, fn in graphs(module):
            for op in g:
                data = self._constant_op_value(op)
                if data is not None:
                    sources[id(op.results[0])] = data
                    known[id(op.results[0])] = data
                    groups.setdefault(id(fn), (fn, []))[1].append(op)
                    continue
                if not self._foldable(op, local_functions, constants, known):
                    continue
                groups.setdefault(id(fn), (fn, []))[1].append(op)
                for r in op.results:
                    if r is not None:
                        known[id(r)] = None
        changed = False
        for fn, ops in groups.values():
            changed |= self._fold_group(module, fn, ops, constants, sources, ctx)
        return changed

    # -- which ops -----------------------------------------------------------------------------
    @staticmethod
    def _constant_op_value(op: Op) -> Tensor | None:
        if op.domain in ("", "ai.onnx") and op.op_type == "Constant" and not op.operands \
                and len(op.results) == 1 and op.results[0] is not None and len(op.attrs) == 1:
            a = op.attrs.get("value")
            if a is not None and a.ref is None and a.kind == "tensor" and isinstance(a.value, Tensor):
                return a.value
        return None

    def _foldable(self, op: Op, local_functions: set, constants: set[int], known: dict) -> bool:
        if op.domain not in _DOMAINS or (op.domain, op.op_type) in local_functions:
            return False
        default = op.domain in ("", "ai.onnx")
        if default and op.op_type in NONDETERMINISTIC:
            return False
        if op.op_type == "DequantizeLinear":  # the quantized weights are the point: keep them small
            return False
        if not any(r is not None for r in op.results):
            return False
        for a in op.attrs.values():
            if a.ref is not None or a.kind in ("graph", "graphs"):
                return False
            if a.kind == "tensor" and a.value.is_elided:
                return False
            if a.kind == "tensors" and any(t.is_elided for t in a.value):
                return False
        for r in op.results:
            if r is None:
                continue
            if r.type is not None and not isinstance(r.type, TensorType):
                return False
            if isinstance(r.type, TensorType) and r.type.is_static and _size(r.type.shape) > self.max_size:
                return False
        present = [v for v in op.operands if v is not None]
        if not present:
            return default and op.op_type == "Constant"
        for v in present:
            if id(v) in known:
                t = known[id(v)]
                if t is not None and t.is_elided:
                    return False
                continue
            if id(v) not in constants or not isinstance(v.const, Tensor) or v.const.is_elided:
                return False
        if default and op.op_type == "ConstantOfShape":
            shape = op.operands[0]
            t = known.get(id(shape), shape.const if id(shape) in constants else None)
            if t is not None and _size(t.numpy().reshape(-1).tolist()) > self.max_size:
                return False
        return True

    def _grows_model(self, op: Op, needed: list[Value], values: dict) -> bool:
        out = sum(values[id(r)].size for r in needed if values.get(id(r)) is not None)
        if out <= self.max_growth:
            return False
        inputs = 0
        for v in op.operands:
            t = None if v is None else values.get(id(v), v.const)
            inputs += t.size if isinstance(t, Tensor) else 0
        return out >= 4 * inputs

    # -- evaluation and rewriting ----------------------------------------------------------------
    def _fold_group(self, module: Module, fn, ops: list[Op], constants: set[int],
                    sources: dict[int, Tensor], ctx: PassContext) -> bool:
        def keep_constant_op(op: Op) -> bool:
            return not self.fold_constant_ops or not can_hold_consts(module, op.graph, fn)

        to_eval = [op for op in ops if not (op.results and op.results[0] is not None
                                            and id(op.results[0]) in sources and _is_constant_op(op))]
        if not to_eval and all(keep_constant_op(op) for op in ops):
            return False
        opsets = opsets_for(module, fn)
        values = _evaluate(to_eval, opsets, sources, ctx) if to_eval else {}
        values.update(sources)
        tainted = _float16_islands(to_eval, values, opsets)
        fold_set = {id(op) for op in ops}
        had_uses = {id(op) for op in ops if any(r is not None and r._uses for r in op.results)}
        kept: set[int] = set()
        plan: list[tuple[Op, list[Value]]] = []
        for op in reversed(ops):
            needed = [r for r in op.results if r is not None and _needed(r, fold_set, kept)]
            if not needed:
                continue
            if _is_constant_op(op) and keep_constant_op(op):
                kept.add(id(op))
                continue
            if id(op) in tainted:
                kept.add(id(op))
                continue
            # a Constant op's own tensor is already in the model: no size limit for it
            limit = None if id(op.results[0]) in sources else self.max_size
            if limit is not None and self._grows_model(op, needed, values):
                ctx.remark(op, f"not folded: its result is over {self.max_growth} elements and 4x its inputs "
                               "(raise max-growth to fold it)")
                kept.add(id(op))
                continue
            if all(self._materializable(r, values.get(id(r)), limit) for r in needed):
                plan.append((op, needed))
            else:
                kept.add(id(op))
        changed = False
        made: dict[tuple, list[Value]] = {}  # (type, payload key) -> the consts made, one per graph
        for op, needed in reversed(plan):
            for r in needed:
                data = values[id(r)]
                t = TensorType(data.dtype, data.shape, r.type.quant if isinstance(r.type, TensorType) else None)
                if not can_hold_consts(module, op.graph, fn):
                    new_op = Op("Constant", [], results=0, attrs={"value": data}, name=op.name)
                    op.graph.insert_before(op, new_op)
                    new = new_op.add_result(Value(r.name, t))
                else:
                    same = made.setdefault((t, payload_key(data)), [])
                    new = next((v for v in same if op.graph.consts.get(v.name) is v), None)
                    if new is None:
                        new = op.graph.add_const(r.name or "folded", data, t)
                        same.append(new)
                r.replace_all_uses_with(new)
                changed = True
        _share_across_subgraphs(module, fn, [vs for vs in made.values() if len(vs) > 1])
        for op in reversed(ops):
            if op.graph is not None and id(op) in had_uses and id(op) not in kept \
                    and all(r is None or not r._uses for r in op.results):
                erase_op(op)
                changed = True
        return changed

    @staticmethod
    def _materializable(r: Value, data: Tensor | None, limit: int | None) -> bool:
        if data is None or (limit is not None and data.size > limit):
            return False
        t = r.type
        if isinstance(t, TensorType):
            if t.dtype is not None and t.dtype != data.dtype:
                return False
            if t.shape is not None:
                if len(t.shape) != len(data.shape):
                    return False
                if any(isinstance(d, int) and d != s for d, s in zip(t.shape, data.shape)):
                    return False
        return True


def _share_across_subgraphs(module: Module, fn, groups: list[list[Value]]) -> None:
    """Equal folded consts of several graphs become one const of their innermost common
    enclosing graph, which the subgraphs read from there::

        If then: const @a_t = Transpose(@W)   else: const @b_t = Transpose(@W)
            ->  const @a_t (main graph), read by both branches

    Without this, a weight that each If branch (or each nested body) reorders, e.g. an LSTM's
    gates sliced and concatenated in both branches, is stored once per branch."""
    if not groups:
        return
    parent: dict[int, Graph] = {}
    holder: dict[int, Graph] = {}
    for g, _ in graphs(module):
        for v in g.consts.values():
            holder[id(v)] = g
        for op in g:
            for sub in op.subgraphs():
                parent[id(sub)] = g

    def chain(g: Graph) -> list[Graph]:
        out = [g]
        while id(out[-1]) in parent:
            out.append(parent[id(out[-1])])
        return out

    for values in groups:
        chains = [chain(holder[id(v)]) for v in values]
        common = [g for g in chains[0] if all(any(g is h for h in c) for c in chains[1:])]
        if not common or not can_hold_consts(module, common[0], fn):
            continue
        home, keep = common[0], values[0]
        holder_of_keep = holder[id(keep)]
        holder_of_keep.remove_const(keep)
        shared = home.add_const(keep.name, keep.const, keep.type)
        keep.replace_all_uses_with(shared)
        for v in values[1:]:
            holder[id(v)].remove_const(v)
            v.replace_all_uses_with(shared)


def _is_constant_op(op: Op) -> bool:
    return op.domain in ("", "ai.onnx") and op.op_type == "Constant"


def _needed(r: Value, fold_set: set[int], kept: set[int]) -> bool:
    for user, _ in r.uses():
        if not isinstance(user, Op) or id(user) not in fold_set or id(user) in kept:
            return True
    return False


def _size(shape: Iterable) -> int:
    n = 1
    for d in shape:
        n *= max(int(d), 0)
    return n


def _float16_islands(ops: list[Op], values: dict[int, Tensor], opsets: dict[str, int]) -> set[int]:
    """ids of ops whose float16 results onnxruntime would not round like a folded const.

    onnxruntime's CPU provider runs a float16 op without a float16 kernel in float32 (it inserts
    Casts), and a chain of such ops stays in float32 between them. A folded float16 const is
    rounded, so folding such an op could change the consumer's result in the last bit. Those
    ops, and the ops computed from them, are not folded.
    """
    tainted: set[int] = set()
    bad_values: set[int] = set()
    for op in ops:
        dtypes = set()
        for v in op.operands:
            if v is None:
                continue
            if id(v) in bad_values:
                break
            t = values.get(id(v), v.const)
            if t is not None:
                dtypes.add(t.dtype)
        else:
            dtypes.update(values[id(r)].dtype for r in op.results if r is not None and id(r) in values)
            if DType.f16 not in dtypes or _ort_has_f16_kernel(op.domain, op.op_type, opsets):
                continue
        tainted.add(id(op))
        bad_values.update(id(r) for r in op.results if r is not None)
    return tainted


_F16_KERNELS: dict[tuple[str, str], list[tuple[int, int]]] | None = None


def _ort_has_f16_kernel(domain: str, op_type: str, opsets: dict[str, int]) -> bool:
    global _F16_KERNELS
    if _F16_KERNELS is None:
        table: dict[tuple[str, str], list[tuple[int, int]]] = {}
        try:
            from onnxruntime.capi import onnxruntime_pybind11_state as C

            for k in C.get_all_opkernel_def():
                if k.provider == "CPUExecutionProvider" and any(
                        "tensor(float16)" in types for types in k.type_constraints.values()):
                    table.setdefault((k.domain, k.op_name), []).append(tuple(k.version_range))
        except Exception:  # no kernel registry: treat every float16 op as computed in float32
            pass
        _F16_KERNELS = table
    domain = "" if domain == "ai.onnx" else domain
    version = opsets.get(domain, 0)
    return any(lo <= version <= hi for lo, hi in _F16_KERNELS.get((domain, op_type), ()))


# -- running ops -------------------------------------------------------------------------------
def _evaluate(ops: list[Op], opsets: dict[str, int], sources: dict[int, Tensor],
              ctx: PassContext) -> dict[int, Tensor]:
    """id(result) -> data for every result that could be computed.

    One onnxruntime run for all ops; when onnxruntime names a node it cannot load or run,
    that node and the nodes depending on it move to the reference evaluator and onnxruntime
    runs the rest again. A failure that names no node falls back to one op at a time.
    """
    results: dict[int, Tensor] = {}
    order = {id(op): i for i, op in enumerate(ops)}
    pending, fallback, unnamed = list(ops), [], []
    while pending:
        try:
            results.update(_run_batch(pending, opsets, sources, results, "ort"))
            pending = []
        except _NodeFailed as e:
            bad = pending[e.index]
            ctx.remark(bad, "onnxruntime cannot evaluate it (" + e.message.strip().splitlines()[0][:200]
                       + "); trying the ONNX reference evaluator")
            dependent = _dependents(pending, e.index)
            fallback += [op for i, op in enumerate(pending) if i in dependent]
            pending = [op for i, op in enumerate(pending) if i not in dependent]
        except Exception:
            unnamed, pending = pending, []
    if unnamed:  # onnxruntime failed without naming a node: isolate it
        results.update(_run_one_by_one(unnamed, opsets, sources, results, ctx))
    if fallback:
        fallback.sort(key=lambda op: order[id(op)])
        try:
            results.update(_run_batch(fallback, opsets, sources, results, "ref"))
        except Exception:
            results.update(_run_one_by_one(fallback, opsets, sources, results, ctx, runners=("ref",)))
    return results


def _run_one_by_one(ops: list[Op], opsets, sources, results, ctx, runners=("ort", "ref")) -> dict[int, Tensor]:
    """Each op alone: onnxruntime first, then the reference evaluator; failures stay unfolded."""
    out: dict[int, Tensor] = {}
    for op in ops:
        avail = {**results, **out}
        if not all(v is None or id(v) in avail or id(v) in sources or v.const is not None for v in op.operands):
            continue
        error = None
        for runner in runners:
            try:
                out.update(_run_batch([op], opsets, sources, avail, runner))
                error = None
                break
            except Exception as e:
                error = e
        if error is not None:
            why = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            ctx.remark(op, f"not folded: neither onnxruntime nor the reference evaluator runs it ({why})")
    return out


def _dependents(ops: list[Op], index: int) -> set[int]:
    tainted = {id(r) for r in ops[index].results if r is not None}
    out = {index}
    for i in range(index + 1, len(ops)):
        if any(v is not None and id(v) in tainted for v in ops[i].operands):
            out.add(i)
            tainted.update(id(r) for r in ops[i].results if r is not None)
    return out


class _NodeFailed(Exception):
    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index, self.message = index, message


def _run_batch(ops: list[Op], opsets: dict[str, int], sources: dict[int, Tensor],
               computed: dict[int, Tensor], runner: str) -> dict[int, Tensor]:
    """Run ``ops`` as one model; inputs come from consts, ``sources`` and ``computed``."""
    from qc.ir.core import Module
    from qc.onnx.writer import export_onnx

    tg = Graph("qc_fold")
    mapping: dict[int, Value] = {}
    outputs: list[tuple[Value, Value]] = []  # (original, temporary)

    def operand(v: Value | None) -> Value | None:
        if v is None:
            return None
        m = mapping.get(id(v))
        if m is None:
            data = computed.get(id(v))
            if data is None:
                data = sources.get(id(v))
            if data is None:
                data = v.const
            if data is None:
                raise ValueError(f"input %{v.name} is not available")
            m = mapping[id(v)] = tg.add_const(v.name or "c", data)
        return m

    for i, op in enumerate(ops):
        new = Op(op.op_type, [operand(v) for v in op.operands], domain="" if op.domain == "ai.onnx" else op.domain,
                 results=[Value(f"__qcfold{i}_{j}") if r is not None else None for j, r in enumerate(op.results)],
                 attrs=dict(op.attrs), name=f"__qcfold{i}")
        tg.append(new)
        for r, nr in zip(op.results, new.results):
            if r is not None:
                mapping[id(r)] = nr
                outputs.append((r, nr))
    for _, nr in outputs:
        tg.add_output(nr)
    opset_imports = {("" if d == "ai.onnx" else d): v for d, v in opsets.items()}
    if "" not in opset_imports:
        opset_imports[""] = 21
    from onnx.helper import find_min_ir_version_for, make_opsetid

    try:
        ir = find_min_ir_version_for([make_opsetid(d, v) for d, v in opset_imports.items()], ignore_unknown=True)
    except Exception:
        ir = 10
    proto = export_onnx(Module(tg, opset_imports=opset_imports, ir_version=max(ir, 7)))
    index_of = {f"__qcfold{i}": i for i in range(len(ops))}
    if runner == "ort":
        arrays = _run_ort(proto, index_of, len(outputs))
    else:
        from onnx.reference import ReferenceEvaluator

        raw = ReferenceEvaluator(proto).run(None, {})
        arrays = [Tensor.from_array(np.asarray(a)) if isinstance(a, (np.ndarray, np.generic)) else None
                  for a in raw]
    return {id(r): t for (r, _), t in zip(outputs, arrays) if t is not None}


def _run_ort(proto, index_of: dict[str, int], n_outputs: int) -> list[Tensor | None]:
    try:
        sess = ort_session(proto, log_level=4)
        values = sess.run_with_ort_values(None, {})
    except Exception as e:
        m = _NODE_NAME.search(str(e))
        if m and f"__qcfold{m.group(1)}" in index_of:
            raise _NodeFailed(index_of[f"__qcfold{m.group(1)}"], str(e)) from None
        raise
    return [_ort_to_tensor(v) for v in values]


def _ort_to_tensor(v) -> Tensor | None:
    if not v.is_tensor():
        return None
    dtype = DType(v.element_type())
    shape = tuple(v.shape())
    if dtype is DType.str:
        return Tensor.from_array(v.numpy(), DType.str)
    try:
        array = v.numpy()
    except Exception:  # no numpy type (bfloat16, float8, int4, ...): copy the raw bytes
        raw = ctypes.string_at(v.data_ptr(), v.tensor_size_in_bytes()) if v.tensor_size_in_bytes() else b""
        return Tensor.from_proto(TensorProto(data_type=int(dtype), dims=list(shape), raw_data=raw))
    if array.dtype != dtype.numpy:
        return None
    return Tensor.from_array(np.array(array, copy=True), dtype)
