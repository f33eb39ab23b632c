"""The ``fix-shapes`` pass; its docstring (``qc passes fix-shapes``) lists every rewrite."""
from __future__ import annotations

from dataclasses import dataclass

from qc.errors import QCError
from qc.ir.core import Module
from qc.ir.types import TensorType
from qc.pm import Pass, PassContext, register_pass


@register_pass("fix-shapes")
@dataclass(frozen=True)
class FixShapes(Pass):
    """fix-shapes: give the model inputs static shapes.

    Rewrites (main graph inputs only; ``shapes`` items are ``NAME:AxB``, e.g.
    ``fix-shapes{shapes=input_ids:1x16,attention_mask:1x16}``; ``NAME:`` is a scalar, a 0
    dimension an empty one)::

        input %input_ids : i64[batch, seq]     (shapes=input_ids:1x16)  ->  input %input_ids : i64[1, 16]
        input %x : f32[?, 4]                   (shapes=x:3x4)           ->  input %x : f32[3, 4]
        input %x : f32[2, 4]                   (no item for x)          ->  unchanged (already static)

    Errors (QCError, nothing changed): an item that names no model input; an item that does not
    fit the input's shape (another rank, or a different number where the input has one); an input
    that is not a tensor; an input left without a static shape. A malformed item fails when the
    pipeline is parsed. The dtype and quantization parameters stay; the shapes of the other
    values are left to ``propagate-shapes``.
    """

    shapes: tuple[str, ...] = ()
    """static shapes of model inputs, NAME:AxB items (NAME: for a scalar)"""

    def __post_init__(self) -> None:
        parse_shape_items(self.shapes)

    def run(self, module: Module, ctx: PassContext) -> bool:
        shapes = parse_shape_items(self.shapes)
        inputs = [v for v in module.graph.inputs if v.const is None]
        known = {v.name for v in inputs}
        for name in shapes:
            if name not in known:
                raise QCError(f"--shape names '{name}', which is not a model input",
                              hint="inputs: " + ", ".join(sorted(known)))
        new_types: dict[str, TensorType] = {}
        for v in inputs:
            t = v.type
            if not isinstance(t, TensorType):
                raise QCError(f"input '{v.name}' is not a tensor", where=f"input '{v.name}'")
            if v.name in shapes:
                s = shapes[v.name]
                if t.shape is not None and (len(t.shape) != len(s)
                                            or any(isinstance(d, int) and d != n for d, n in zip(t.shape, s))):
                    raise QCError(f"--shape {v.name}={'x'.join(map(str, s))} does not fit the input's shape "
                                  f"[{', '.join(str(d) for d in t.shape)}]", where=f"input '{v.name}'")
                new_types[v.name] = TensorType(t.dtype, s, t.quant)
            elif not t.is_static:
                dims = "x".join(str(d) if isinstance(d, int) else "N" for d in (t.shape or ()))
                raise QCError(f"input '{v.name}' has no static shape", where=f"input '{v.name}'",
                              hint=f"give it one with --shape {v.name}={dims or 'AxB'}")
        changed = False
        for v in inputs:
            new = new_types.get(v.name)
            if new is not None and new != v.type:
                v.type = new
                changed = True
        return changed


def parse_shape_items(items: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """``("input_ids:1x16", "mask:1x16")`` -> ``{"input_ids": (1, 16), "mask": (1, 16)}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, colon, dims = item.strip().rpartition(":")
        try:
            if not colon or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.lower().split("x")) if dims.strip() else ()
            if any(d < 0 for d in shape):  # 0 is a valid (empty) dimension
                raise ValueError
        except ValueError:
            raise QCError(f"fix-shapes: cannot read shape item '{item}'",
                          hint="write NAME:AxB, e.g. shapes=input_ids:1x128,attention_mask:1x128") from None
        shapes[name] = shape
    return shapes
