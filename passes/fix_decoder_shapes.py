"""The ``fix-decoder-shapes`` pass; its docstring (``qc passes fix-decoder-shapes``) lists the rewrite."""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from qc.errors import QCError
from qc.ir.core import Module
from qc.onnx.kv_layout import KVLayout, recognize_module
from qc.pm import Pass, PassContext, register_pass

from .bind_inputs import BindInputs
from .fix_shapes import FixShapes


@register_pass("fix-decoder-shapes")
@dataclass(frozen=True)
class FixDecoderShapes(Pass):
    """fix-decoder-shapes: the static shapes of one step of a KV-cache decoder (the C decode runtime).

    The decoder's interface is recognized by names and shapes (``qc.onnx.kv_layout``: the layout
    Hugging Face Optimum and onnxruntime-genai export). One step reads ``seq`` new tokens with a
    full cache of ``max-context`` slots, batch 1, no padding::

        input %input_ids : i64[batch, seq]                  ->  input %input_ids : i64[1, S]
        input %position_ids : i64[batch, seq]               ->  input %position_ids : i64[1, S]
        input %past_key_values.0.key : f32[batch, 3, past, 64]
                                                            ->  input ... : f32[1, 3, N - S, 64]
        input %attention_mask : i64[batch, past + seq]      ->  const %attention_mask : i64[1, N] = 1

    (S = ``seq``, N = ``max-context``). The mask input becomes ones (every slot visible, batch 1
    without padding), so ``fold-constants`` folds the model's own additive mask to a constant that
    ``fuse-cached-attention`` checks is causal over the cache. The past length stays a run-time
    value of the C code: the static N - S only sizes the buffers.

    Errors: not a KV-cache decoder (no cache pair); a cache that is not float32 (an int8 cache,
    ``--kv-cache-dtype int8``, has no C decode runtime yet); ``seq`` outside 1 .. ``max-context`` - 1.
    """

    max_context: int = 2048
    """cache slots: the longest prompt + generation the C code serves"""
    seq: int = 1
    """tokens per step (1: decode; more: a prefill chunk)"""

    def validate(self) -> None:
        if self.max_context < 2 or not 1 <= self.seq < self.max_context:
            raise QCError(f"fix-decoder-shapes: needs 1 <= seq < max-context (got seq={self.seq}, "
                          f"max-context={self.max_context})")

    def run(self, module: Module, ctx: PassContext) -> bool:
        layout = decoder_layout(module)
        past = self.max_context - self.seq
        shapes = [f"{layout.input_ids.name}:1x{self.seq}"]
        if layout.position_ids is not None:
            shapes.append(f"{layout.position_ids.name}:1x{self.seq}")
        for pair in layout.pairs:
            dims = ["1" if i == 0 else str(past) if i == pair.seq_axis else str(d)
                    for i, d in enumerate(pair.past.dims)]
            shapes.append(f"{pair.past.name}:{'x'.join(dims)}")
        if layout.attention_mask is not None:
            shapes.append(f"{layout.attention_mask.name}:1x{self.max_context}")
        changed = FixShapes(shapes=tuple(shapes)).run(module, ctx)
        if layout.attention_mask is not None:
            ones = (f"{layout.attention_mask.name}:1",) + ("1",) * (self.max_context - 1)
            changed = BindInputs(values=ones).run(module, ctx) or changed
        return changed


def decoder_layout(module: Module) -> KVLayout:
    """The module's KV layout, checked for what the C decode runtime serves (float32 key/value pairs)."""
    layout = recognize_module(module)
    if layout is None:
        raise QCError("the model has no key/value cache (no past_key_values.* inputs with present.* outputs)",
                      hint="the C decode runtime is for KV-cache decoders; compile a plain model with --shape")
    for pair in layout.pairs:
        if pair.past.elem_type != onnx.TensorProto.FLOAT or pair.kind not in ("key", "value"):
            raise QCError(f"cache input '{pair.past.name}' is not a float32 key or value",
                          hint="the C decode runtime keeps a float32 cache: compile without --kv-cache-dtype int8")
        if any(not isinstance(d, int) for i, d in enumerate(pair.past.dims) if i not in (0, pair.seq_axis)):
            raise QCError(f"cache input '{pair.past.name}' has symbolic dims besides batch and sequence "
                          f"({pair.past.dims})", hint="export the model with fixed head counts and sizes")
    return layout
