"""Fix the input shapes and fold the shape arithmetic, so every value has a static shape."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from qc.errors import QCError
from qc.ir import Module, Tensor, TensorType

# fold-constants would also turn DequantizeLinear(int8 weight) into a float weight; the bound
# keeps weights quantized while the (small) shape arithmetic still folds.
_FOLD = "propagate-shapes,fold-constants{max-size=4096},dce,propagate-shapes"


def parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    """'input_ids=1x128,mask=1x128' -> {'input_ids': (1, 128), 'mask': (1, 128)}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, eq, dims = item.rpartition("=")
        try:
            if not eq or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.lower().split("x")) if dims.strip() else ()
            if any(d < 1 for d in shape):
                raise ValueError
        except ValueError:
            raise QCError(f"--shape: cannot read '{item}'", hint="write NAME=AxB, e.g. input_ids=1x128") from None
        shapes[name] = shape
    return shapes


def prepare(module: Module, shapes: Mapping[str, Sequence[int]]) -> None:
    """Give every model input a static shape, then fold Shape / Size / ConstantOfShape and constants."""
    from qc.pm import PassManager

    g = module.graph
    inputs = [v for v in g.inputs if v.const is None]
    known = {v.name for v in inputs}
    for name in shapes:
        if name not in known:
            raise QCError(f"--shape names '{name}', which is not a model input",
                          hint="inputs: " + ", ".join(sorted(known)))
    for v in inputs:
        t = v.type
        if not isinstance(t, TensorType):
            raise QCError(f"input '{v.name}' is not a tensor", where=f"input '{v.name}'")
        if v.name in shapes:
            s = tuple(int(d) for d in shapes[v.name])
            if t.shape is not None and (len(t.shape) != len(s)
                                        or any(isinstance(d, int) and d != n for d, n in zip(t.shape, s))):
                raise QCError(f"--shape {v.name}={'x'.join(map(str, s))} does not fit the input's shape "
                              f"[{', '.join(str(d) for d in t.shape)}]", where=f"input '{v.name}'")
            v.type = TensorType(t.dtype, s, t.quant)
        elif not t.is_static:
            dims = "x".join(str(d) if isinstance(d, int) else "N" for d in (t.shape or ()))
            raise QCError(f"input '{v.name}' has no static shape", where=f"input '{v.name}'",
                          hint=f"give it one with --shape {v.name}={dims or 'AxB'}")
    for _ in range(16):
        PassManager.parse(_FOLD).run(module)
        if _has_contrib_matmul(module):
            _infer_through_contrib(module)
        if not _fold_shape_ops(module):
            break


def _fold_shape_ops(module: Module) -> bool:
    g = module.graph
    changed = False
    for op in list(g):
        if op.domain not in ("", "ai.onnx") or not op.results or op.results[0] is None:
            continue
        arr = None
        if op.op_type in ("Shape", "Size"):
            t = op.operands[0].type if op.operands[0].const is None else None
            shape = tuple(op.operands[0].const.shape) if t is None else (t.shape if isinstance(t, TensorType) and t.is_static else None)
            if shape is None:
                continue
            if op.op_type == "Size":
                arr = np.array(math.prod(shape), np.int64)
            else:
                start, end = op.attr("start", 0), op.attr("end", None)
                arr = np.array(shape[slice(start, end)], np.int64)
        elif op.op_type == "ConstantOfShape" and op.operands[0].const is not None:
            v = op.attr("value")
            value = np.zeros((), np.float32) if v is None else v.numpy().reshape(())
            arr = np.full(tuple(int(d) for d in op.operands[0].const.numpy().tolist()), value, value.dtype)
        if arr is None:
            continue
        r = op.results[0]
        c = g.add_const(f"{r.name or 'folded'}.folded", Tensor.from_array(arr))
        r.replace_all_uses_with(c)
        g.remove(op)
        changed = True
    return changed



def _has_contrib_matmul(module: Module) -> bool:
    return any(op.domain == "com.microsoft" and op.op_type == "MatMulNBits" for op in module.graph)


def _infer_through_contrib(module: Module) -> None:
    """ONNX shape inference knows no com.microsoft op, so everything after a MatMulNBits stays
    symbolic. Infer on a copy where each MatMulNBits is MatMul(A, ConstantOfShape([K, N])) (the
    same result shape) and merge the result types into the IR, as propagate-shapes does."""
    import onnx
    from onnx import TensorProto, helper

    from qc.onnx.writer import export_onnx_sharing_weights
    from qc.onnx.reader import convert_type
    from qc.passes.propagate_shapes import _collect, _values, merge_types

    proto, _ = export_onnx_sharing_weights(module)
    nodes = []
    for n in proto.graph.node:
        if n.domain == "com.microsoft" and n.op_type == "MatMulNBits":
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            shape, zeros = n.output[0] + ".qc_kn", n.output[0] + ".qc_w"
            nodes += [helper.make_node("Constant", [], [shape], value=helper.make_tensor(
                          shape, TensorProto.INT64, [2], [a["K"], a["N"]])),
                      helper.make_node("ConstantOfShape", [shape], [zeros]),
                      helper.make_node("MatMul", [n.input[0], zeros], [n.output[0]])]
        else:
            nodes.append(n)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # noqa: BLE001 - as propagate-shapes: leave the types as they are
        return
    types: dict = {}
    _collect(inferred.graph, types)
    for v in _values(module.graph, top=True):
        tp = types.get(v.name)
        if tp is not None:
            v.type = merge_types(v.type, convert_type(tp))
