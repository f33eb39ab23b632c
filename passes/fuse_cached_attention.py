"""The ``fuse-cached-attention`` pass; its docstring (``qc passes fuse-cached-attention``) lists the rewrite."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qc.errors import QCError
from qc.ir.core import Module, Op, Value
from qc.onnx.kv_layout import CachePair
from qc.pm import Pass, PassContext, register_pass

from . import _fuse as F
from .fix_decoder_shapes import decoder_layout

ROLE_PREFIX = "qc.decode."
"""Metadata keys naming the step's inputs and output: qc.decode.input_ids, .position_ids, .logits."""
MASKED = -1e4
"""An additive mask entry at or below this hides its slot (exporters write -inf, float32's min or -1e9)."""


@register_pass("fuse-cached-attention")
@dataclass(frozen=True)
class FuseCachedAttention(Pass):
    """fuse-cached-attention: attention over a KV cache -> one qc.CachedAttention per layer (the C decode runtime).

    After ``fix-decoder-shapes`` (static step shapes: S new tokens, a cache of N slots) and
    ``fuse-attention``::

        %k = onnx.Concat(%past_key_values.0.key, %k_new) {axis = 2}      (%k: graph output present.0.key)
        %v = onnx.Concat(%past_key_values.0.value, %v_new) {axis = 2}
        %y = qc.Attention(%q, %k, %v, @mask) {scale = s}                  @mask causal over the cache
            ->  %y = qc.CachedAttention(%q, %k_new, %v_new) {scale = s, key_cache = 0, value_cache = 1,
                                                             max_context = N}

    and the past inputs and present outputs leave the graph (the module's metadata
    ``qc.decode.input_ids`` / ``.position_ids`` / ``.logits`` names what is left): the cache becomes the step's state,
    ``key_cache`` / ``value_cache`` number its slots in the order of the model's cache inputs, each
    [kv_heads, N, head_dim]. ``qc.CachedAttention`` appends the new keys and values at the run-time
    past length ``p`` and attends query ``i`` to slots ``0 .. p + i`` (GQA as qc.Attention: query
    head h reads cache head h / (H / Hkv)).

    The mask (made a constant by ``fix-decoder-shapes``, which feeds an all-ones attention_mask)
    must be the causal mask of the last S slots: 0 where slot j <= N - S + i, at most -1e4
    elsewhere; a mask that hides other slots (a sliding window shorter than N, padding) is an
    error, as is a cache the model reads any other way (no fused attention reads it, or something
    besides attention does): the C decode runtime would compute something else.
    """

    def run(self, module: Module, ctx: PassContext) -> bool:
        layout = decoder_layout(module)
        g = module.graph
        index = {p.past.name: i for i, p in enumerate(layout.pairs)}
        pairs = {p.past.name: p for p in layout.pairs}
        rewritten = 0
        for op in list(g.ops):
            if op.qualified_type != "qc.Attention":
                continue
            q, k, v = op.operands[:3]
            mask = op.operands[3] if len(op.operands) > 3 else None
            ck, cv = _cache_concat(k, pairs), _cache_concat(v, pairs)
            if ck is None or cv is None:
                continue
            (k_cat, k_pair), (v_cat, v_pair) = ck, cv
            n = k_cat.results[0].type.shape[2]
            s = k_cat.operands[1].type.shape[2]
            if mask is not None:
                _check_causal(mask, n, s, op)
            fused = Op("CachedAttention", [q, k_cat.operands[1], v_cat.operands[1]], domain=F.QC_DOMAIN, results=0,
                       attrs={"scale": float(op.attr("scale", 1.0 / np.sqrt(q.type.shape[3]))),
                              "key_cache": index[k_pair.past.name], "value_cache": index[v_pair.past.name],
                              "max_context": int(n)})
            F.apply(op, fused, [])
            rewritten += 1
        if not rewritten:
            raise QCError("no attention over the KV cache was recognized: the C decode runtime needs each "
                          "layer's present key/value (Concat of past and new) read by one fused attention",
                          hint="see docs/c-backend.md, 'KV-cache decoders', for the attention forms qc fuses")
        _detach_cache(module, layout.pairs)
        roles = {"input_ids": layout.input_ids.name, "logits": layout.logits.name}
        if layout.position_ids is not None:
            roles["position_ids"] = layout.position_ids.name
        module.metadata = [(k, v) for k, v in module.metadata if not k.startswith(ROLE_PREFIX)]
        module.metadata += [(ROLE_PREFIX + role, name) for role, name in roles.items()]
        return True


def _cache_concat(x: Value, pairs: dict[str, CachePair]) -> tuple[Op, CachePair] | None:
    """(the Concat, its pair) when x = Concat(past input, new) along the pair's sequence axis."""
    cat = F.producer(x, "Concat")
    if cat is None or len(cat.operands) != 2:
        return None
    past = cat.operands[0]
    pair = pairs.get(past.name or "")
    if pair is None or past not in cat.graph.inputs:
        return None
    rank = len(past.type.shape)
    if int(cat.attr("axis", 0)) % rank != pair.seq_axis or pair.seq_axis != 2 or rank != 4:
        return None
    return cat, pair


def _check_causal(mask: Value, n: int, s: int, op: Op) -> None:
    where = f"node '{op.name}'"
    if mask.const is None:
        raise QCError("the attention mask over the KV cache is not a constant after fix-decoder-shapes: it "
                      "depends on more than the attention mask and the shapes", where=where,
                      hint="the C decode runtime serves causal masks over the whole cache")
    try:
        m = np.broadcast_to(mask.const.numpy(), (1, 1, s, n)).reshape(s, n)
    except ValueError:
        raise QCError("the attention mask does not broadcast to [1, 1, seq, total]", where=where) from None
    visible = np.arange(n)[None, :] <= (n - s) + np.arange(s)[:, None]
    if not (np.all(m[visible] == 0.0) and np.all(m[~visible] <= MASKED)):
        hidden = int(np.count_nonzero(m[visible] != 0.0))
        raise QCError(f"the attention mask is not causal over the cache ({hidden} past slots are hidden or "
                      "weighted: a sliding window shorter than the context, or another mask)", where=where,
                      hint="lower --max-context to at most the window, or run the model in onnxruntime")


def _detach_cache(module: Module, pairs: tuple[CachePair, ...]) -> None:
    """Drop the cache's Concats, past inputs and present outputs once only they still read them."""
    g = module.graph
    names = {p.past.name for p in pairs} | {p.present.name for p in pairs}
    for o in g.outputs:
        readers = [u for u, _ in o.uses() if u is not g]
        if o.name in names and readers:
            raise QCError(f"'{o.name}' is read by more than the cached attention (by "
                          f"{', '.join(sorted({u.op_type for u in readers}))})",
                          hint="the C decode runtime owns the cache: nothing else may read it")
    g.set_outputs([o for o in g.outputs if o.name not in names])
    for op in list(g.ops):
        if op.op_type == "Concat" and op.results[0].name in names and not op.results[0].uses():
            g.remove(op)
    for v in list(g.inputs):
        if v.name in names:
            if v.uses():
                raise QCError(f"cache input '{v.name}' is read by more than the cached attention (by "
                              f"{', '.join(sorted({u.op_type for u, _ in v.uses()}))})",
                              hint="the C decode runtime owns the cache: nothing else may read it")
            g.inputs.remove(v)
