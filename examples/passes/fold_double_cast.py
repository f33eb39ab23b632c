"""A custom qc pass, loaded with `qc opt --load-pass examples/passes/fold_double_cast.py`.

Cast(Cast(x, to=A), to=B) -> Cast(x, to=B)   when casting x to A loses nothing
"""
from __future__ import annotations

from dataclasses import dataclass

from qc.ir import DType, Module, Op, TensorType
from qc.passes import Pass, PassContext, register_pass

# dtype -> the dtypes that hold every one of its values exactly
_EXACT_IN = {
    DType.bool: {DType.u8, DType.i8, DType.u16, DType.i16, DType.u32, DType.i32, DType.u64, DType.i64,
                 DType.f16, DType.f32, DType.f64},
    DType.u8: {DType.u16, DType.i16, DType.u32, DType.i32, DType.u64, DType.i64, DType.f16, DType.f32, DType.f64},
    DType.i8: {DType.i16, DType.i32, DType.i64, DType.f16, DType.f32, DType.f64},
    DType.u16: {DType.u32, DType.i32, DType.u64, DType.i64, DType.f32, DType.f64},
    DType.i16: {DType.i32, DType.i64, DType.f32, DType.f64},
    DType.u32: {DType.u64, DType.i64, DType.f64},
    DType.i32: {DType.i64, DType.f64},
    DType.f16: {DType.f32, DType.f64},
    DType.bf16: {DType.f32, DType.f64},
    DType.f32: {DType.f64},
}


@register_pass("fold-double-cast")
@dataclass(frozen=True)
class FoldDoubleCast(Pass):
    """Cast(Cast(x, to=A), to=B) -> Cast(x, to=B) when A holds every value of x exactly.

    With allow-lossy=true the inner cast is dropped even when it rounds (this changes results).
    """

    allow_lossy: bool = False

    def run(self, module: Module, ctx: PassContext) -> bool:
        changed = False
        for op in module.walk():
            inner = self._inner_cast(op)
            if inner is None:
                continue
            source = inner.operands[0]
            source_dtype = source.type.dtype if isinstance(source.type, TensorType) else None
            middle = DType(inner.attr("to"))
            if not self.allow_lossy and middle not in _EXACT_IN.get(source_dtype, ()):
                ctx.remark(op, f"kept: {source_dtype} -> {middle} may round")
                continue
            op.set_operand(0, source)  # the inner Cast is now dead if nothing else reads it; `dce` removes it
            changed = True
        return changed

    @staticmethod
    def _inner_cast(op: Op) -> Op | None:
        if op.domain or op.op_type != "Cast" or op.operands[0] is None:
            return None
        inner = op.operands[0].producer
        if inner is None or inner.domain or inner.op_type != "Cast":
            return None
        return inner
