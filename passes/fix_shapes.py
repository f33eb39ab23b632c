"""The ``fix-shapes`` pass; its docstring (``qc passes fix-shapes``) lists every rewrite."""
from __future__ import annotations

from dataclasses import dataclass

from qc.errors import QCError
from qc.ir.core import Module
from qc.ir.types import TensorType, is_static_dim, shared_symbol
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
        input %x : f32[-1, 3, "?", "?"]        (shapes=x:1x3x48x192)    ->  input %x : f32[1, 3, 48, 192]
        input %x : f32[2, 4]                   (no item for x)          ->  unchanged (already static)

    Only sizes are fixed dimensions (``qc.ir.types.dim_kind``): ``-1``, ``?`` and ``unk__3`` take any
    size each, a shared name such as ``batch`` the same size in every input that has it.

    Errors (QCError, nothing changed): an item that names no model input; an item that does not
    fit the input's shape (another rank, or a different number where the input has one); two
    sizes for one shared name; an input that is not a tensor; an input left without a static
    shape (``partial=true`` leaves such an input, and one that is not a tensor, as it is). A
    malformed item fails when the pipeline is parsed. The dtype and quantization parameters
    stay; the shapes of the other values are left to ``propagate-shapes``.
    """

    shapes: tuple[str, ...] = ()
    """static shapes of model inputs, NAME:AxB items (NAME: for a scalar)"""
    partial: bool = False
    """leave inputs that have no item and no static shape as they are, instead of failing"""

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
        symbols: dict[str, tuple[int, str]] = {}
        for v in inputs:
            t = v.type
            if not isinstance(t, TensorType):
                if self.partial and v.name not in shapes:
                    continue
                raise QCError(f"input '{v.name}' is not a tensor", where=f"input '{v.name}'")
            if v.name in shapes:
                s = shapes[v.name]
                if t.shape is not None and (len(t.shape) != len(s)
                                            or any(is_static_dim(d) and d != n for d, n in zip(t.shape, s))):
                    raise QCError(f"--shape {v.name}={'x'.join(map(str, s))} does not fit the input's shape "
                                  f"[{', '.join(str(d) for d in t.shape)}]", where=f"input '{v.name}'")
                for d, n in zip(t.shape or (), s):
                    name = shared_symbol(d)
                    seen = symbols.setdefault(name, (n, v.name)) if name is not None else (n, v.name)
                    if seen[0] != n:
                        raise QCError(f"--shape gives the dimension '{name}' {seen[0]} in '{seen[1]}' and {n} in "
                                      f"'{v.name}'", where=f"input '{v.name}'",
                                      hint=f"inputs that share '{name}' need one size for it")
                new_types[v.name] = TensorType(t.dtype, s, t.quant)
            elif not t.is_static and not self.partial:
                dims = "x".join(str(d) if is_static_dim(d) else "N" for d in (t.shape or ()))
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


def assumed_shapes(module: Module, given: dict[str, tuple[int, ...]], default: int = 1
                   ) -> tuple[dict[str, tuple[int, ...]], list[dict]]:
    """Static shapes for the tensor inputs of known rank, for estimates on a model whose inputs
    have dynamic dimensions (``qc check``): ``given`` ones as they are; in the others each
    dimension that is not a size takes the size ``given`` has for its shared name, else
    ``default``. Returns ``(shapes, assumed)``, ``assumed`` one dict per dimension that took
    ``default`` (input, axis, dim as declared, size)::

        x : f32[-1, 3, "?", "?"], given {}          ->  x: (1, 3, 1, 1), 3 dims assumed
        ids : i64[batch, seq], given {mask: (2, 8)}
        mask : i64[batch, seq]                       ->  ids: (2, 8), nothing assumed
    """
    symbols: dict[str, int] = {}
    for v in module.graph.inputs:
        if v.name in given and isinstance(v.type, TensorType) and v.type.shape is not None:
            for d, n in zip(v.type.shape, given[v.name]):
                name = shared_symbol(d)
                if name is not None:
                    symbols.setdefault(name, n)
    shapes: dict[str, tuple[int, ...]] = {}
    assumed: list[dict] = []
    for v in module.graph.inputs:
        t = v.type
        if v.const is not None or not isinstance(t, TensorType) or t.shape is None:
            continue
        if v.name in given:
            shapes[v.name] = given[v.name]
            continue
        dims: list[int] = []
        for axis, d in enumerate(t.shape):
            name = shared_symbol(d)
            if isinstance(d, int) and is_static_dim(d):
                dims.append(d)
            elif name is not None and name in symbols:
                dims.append(symbols[name])
            else:
                dims.append(default)
                assumed.append({"input": v.name, "axis": axis, "dim": "?" if d is None else str(d), "size": default})
        shapes[v.name] = tuple(dims)
    return shapes, assumed
