"""The pipeline that readies a module for the C backend: static input shapes, folded shape arithmetic.

It is made of ordinary passes (``fix-shapes``, ``propagate-shapes``, ``fold-constants``, ``dce``,
``fold-shapes``)::

    fix-shapes{shapes=input_ids:1x16,attention_mask:1x16}
    then, until fold-shapes reports no change (at most 16 rounds):
        propagate-shapes,fold-constants{max-size=4096},dce,propagate-shapes,fold-shapes

``prepare`` runs it through the pass manager until the pass manager has a fixpoint group of its
own; ``emit_c`` itself runs no pass and only checks that every value has a static shape.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from qc.errors import QCError
from qc.ir import Module

# fold-constants would also turn DequantizeLinear(int8 weight) into a float weight; the bound
# keeps weights quantized while the (small) shape arithmetic still folds.
FOLD_ROUND = "propagate-shapes,fold-constants{max-size=4096},dce,propagate-shapes,fold-shapes"
"""One round of the folding group; it repeats until its last pass, fold-shapes, changes nothing."""
MAX_ROUNDS = 16


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


def c_prepare_pipeline(shapes: Mapping[str, Sequence[int]]) -> tuple[str, str]:
    """(the pipeline run once, the round repeated until fold-shapes reports no change)."""
    return fix_shapes_spec(shapes), FOLD_ROUND


def prepare(module: Module, shapes: Mapping[str, Sequence[int]]) -> None:
    """Run the preparation pipeline on *module* (in place). Temporary: a loop around the pass
    manager stands in for its fixpoint group."""
    from qc.pm import Instrument, PassManager

    class LastChanged(Instrument):
        changed = False

        def after_pass(self, p, module, index, changed, seconds):
            self.changed = changed

    once, round_ = c_prepare_pipeline(shapes)
    PassManager.parse(once).run(module)
    for _ in range(MAX_ROUNDS):
        last = LastChanged()
        PassManager.parse(round_, instruments=[last]).run(module)
        if not last.changed:
            break
