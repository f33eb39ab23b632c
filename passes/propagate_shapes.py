"""The ``propagate-shapes`` pass; its docstring (``qc passes propagate-shapes``) lists every rewrite."""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from qc.errors import QCError
from qc.ir.core import Module
from qc.onnx.shapes import export_for_inference, merge_inferred
from qc.pm import Pass, PassContext, register_pass


@register_pass("propagate-shapes")
@dataclass(frozen=True)
class PropagateShapes(Pass):
    """propagate-shapes: fill in value types with ONNX shape inference.

    Rewrites (types only; the main graph and its subgraphs)::

        %y = onnx.Relu(%x) : ?                 ->  %y = onnx.Relu(%x) : f32[1, 8]
        %y = onnx.Reshape(%x, @s) : f32[?, ?]  ->  %y = onnx.Reshape(%x, @s) : f32[2, 4]
        %y = onnx.Relu(%x) : f32[N, 8]         ->  unchanged (inference says f32[?, 8]: less specific)
        %y = onnx.Shape(%x) : i64[*]           ->  %y = onnx.Shape(%x) : i64[2]

    The module is exported to ONNX and run through ``onnx.shape_inference.infer_shapes`` with
    ``data_prop=True`` (``strict_mode`` as the ``strict`` option says); the inferred types are
    merged into the IR one dimension at a time: an unknown dtype, an unknown rank, an unknown
    dimension (``?``) or a symbolic one replaced by a number is taken from inference; nothing
    known is ever overwritten (a conflicting dtype, rank or number keeps the IR's value).
    Quantization parameters stay. Main graph inputs are never changed (they are the interface);
    inputs of subgraphs are refined like op results. Function bodies are left alone: ONNX
    inference does not record types inside functions.

    With ``strict=true`` a shape inference error is raised as a QCError; otherwise it is noted as
    a remark and the IR is left unchanged (also when the module cannot be exported, e.g. text IR
    whose weights were elided without a sidecar).
    """

    strict: bool = False
    """raise a QCError when shape inference fails instead of ignoring it"""

    def run(self, module: Module, ctx: PassContext) -> bool:
        try:
            proto = export_for_inference(module)
        except QCError as e:  # e.g. text IR whose weights were elided and have no sidecar
            if self.strict:
                raise
            ctx.remark(None, f"cannot export the module for shape inference, types unchanged: {e}")
            return False
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, check_type=self.strict, strict_mode=self.strict,
                                                         data_prop=True)
        except Exception as e:  # onnx raises InferenceError / ValidationError / RuntimeError
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if self.strict:
                raise QCError(f"shape inference failed: {message}") from None
            ctx.remark(None, f"shape inference failed, types unchanged: {message}")
            return False
        return merge_inferred(module, inferred)
