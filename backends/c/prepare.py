"""The pipeline that readies a module for the C backend: static input shapes, folded shape arithmetic.

It is made of ordinary passes (``fix-shapes``, ``fold-outlier-gather``, ``propagate-shapes``,
``fold-constants``, ``dce``, ``fold-shapes``, the ``fuse-*`` passes)::

    fix-shapes{shapes=input_ids:1x16,attention_mask:1x16}
    propagate-shapes,fold-outlier-gather
    then, until fold-shapes reports no change (at most 16 rounds):
        propagate-shapes,fold-constants{max-size=4096},inline-if,dce,propagate-shapes,fold-shapes
    then once: fuse-matmul-nbits-rows,fuse-layernorm,fuse-add-layernorm,
    fuse-rmsnorm,fuse-add-rmsnorm,fuse-gelu,fuse-silu,fuse-silu-mul,
    fuse-rope,fuse-attention,dce

The fusions run last, on static shapes; the C backend has kernels for what they produce
(lower_fused.py, docs/c-backend.md "Fused ops").

``prepare`` runs it through the pass manager until the pass manager has a fixpoint group of its
own; ``emit_c`` itself runs no pass and only checks that every value has a static shape.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from qc.errors import QCError
from qc.ir import Module

# fold-constants would also turn DequantizeLinear(int8 weight) into a float weight; the bound
# keeps weights quantized while the (small) shape arithmetic still folds.
FOLD_ROUND = "propagate-shapes,fold-constants{max-size=4096},inline-if,dce,propagate-shapes,fold-shapes"
"""One round of the folding group; it repeats until its last pass, fold-shapes, changes nothing."""
MAX_ROUNDS = 16
FUSE = ("fuse-matmul-nbits-rows,fuse-layernorm,fuse-add-layernorm,"
        "fuse-rmsnorm,fuse-add-rmsnorm,fuse-gelu,fuse-silu,fuse-silu-mul,fuse-rope,"
        "fuse-attention,dce")
"""The fusions the C backend has kernels for, run once after the folding group."""
OUTLIER_FOLD = "propagate-shapes,fold-outlier-gather"
"""split-outliers' int8 part reads x itself, not a Gather of its rest columns (exact; before the
folding group, whose fold-constants would turn small weight DequantizeLinears into floats)."""


def parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    """The CLI's ``--shape`` text: 'input_ids=1x128,mask=1x128' -> {'input_ids': (1, 128), 'mask': (1, 128)}."""
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


def fix_shapes_spec(shapes: Mapping[str, Sequence[int]]) -> str:
    """{'input_ids': (1, 16)} -> 'fix-shapes{shapes=input_ids:1x16}' (the pass's NAME:AxB items)."""
    items = [f"{name}:{'x'.join(str(int(d)) for d in dims)}" for name, dims in shapes.items()]
    return "fix-shapes{shapes=" + ",".join(items) + "}" if items else "fix-shapes"


def c_prepare_pipeline(shapes: Mapping[str, Sequence[int]], *, fold_outliers: bool = True) -> str:
    """The passes that give the C backend static shapes: ``fix-shapes`` for the inputs, then the
    shape arithmetic folded to a fixpoint (each round: shape inference, small constants, the
    taken branch of an If with a constant condition, dce, Shape/Size/ConstantOfShape and the
    contrib ops' types), then the fusions (``FUSE``). ``fold_outliers``: run ``OUTLIER_FOLD``
    after ``fix-shapes``."""
    head = fix_shapes_spec(shapes) + ("," + OUTLIER_FOLD if fold_outliers else "")
    return f"{head},fixpoint{{max-rounds={MAX_ROUNDS}}}({FOLD_ROUND}),{FUSE}"


def c_decode_pipeline(max_context: int, seq: int = 1) -> str:
    """The passes that give the C decode runtime one step of a KV-cache decoder: ``fix-decoder-shapes``
    (``seq`` new tokens, ``max_context`` cache slots, the attention mask all ones), the folding
    group (its constants bound raised to fold the model's own mask of seq x max_context), the
    fusions, then ``fuse-cached-attention`` (the cache becomes the step's state, docs/c-backend.md
    "KV-cache decoders")."""
    fold = FOLD_ROUND.replace("max-size=4096", f"max-size={max(4096, seq * max_context)}")
    return (f"fix-decoder-shapes{{max-context={max_context},seq={seq}}},{OUTLIER_FOLD},"
            f"fixpoint{{max-rounds={MAX_ROUNDS}}}({fold}),{FUSE},fuse-cached-attention,dce")


def prepare(module: Module, shapes: Mapping[str, Sequence[int]]) -> None:
    """Run ``c_prepare_pipeline(shapes)`` on *module*, in place (for callers outside ``qc.compile``,
    whose one pipeline already holds these passes)."""
    from qc.pm import PassManager

    PassManager.parse(c_prepare_pipeline(shapes)).run(module)
