"""Values inside If / Loop bodies as outputs of the main graph, so that onnxruntime returns them.

onnxruntime fetches only main-graph outputs; a value computed inside a subgraph is made one by
threading it out through every enclosing op::

    %y = If(%c) then { %h = MatMul(%x, @w) ... }  else { ... }
        ->  %y, %h.qc_observed = If(%c)
                then { %h = MatMul(%x, @w) ... ; %h.qc_obs = Identity(%h) -> extra output }
                else { ... ; %h.qc_pad = Constant(f32[0]) -> extra output }

An If gets the value from the branch that computes it and an empty tensor (shape [0]) from the
other branch, which has to return as many outputs (ONNX lets the branches' shapes differ). A
Loop returns it as an extra scan output: the values of every iteration stacked on a new
leading axis (``levels`` counts those axes). Scan bodies are not threaded (their scan output
attributes would need rewriting): values inside a Scan are not exposed.
"""
from __future__ import annotations

from dataclasses import dataclass

from onnx import AttributeProto, GraphProto, ModelProto, helper

SUFFIX = ".qc_observed"
THREADED = ("If", "Loop")


@dataclass(frozen=True)
class Exposed:
    """Where a subgraph value comes out: ``output`` of the main graph, with ``levels`` leading
    axes stacked by enclosing Loops (0 inside If branches only); an If branch that did not run
    gives an empty tensor."""

    output: str
    levels: int


def expose_subgraph_values(model: ModelProto, wanted: dict[str, int]) -> dict[str, Exposed]:
    """Make each value named in ``wanted`` (name -> ONNX elem type) that is defined inside an If
    or Loop body (its own or a nested one) an output of ``model``'s main graph, in place; returns
    how each found one comes out. Names not defined in such a body are left out of the result."""
    out: dict[str, Exposed] = {}
    for name, levels in _thread(model.graph, wanted, top=True):
        out[name] = Exposed(name + SUFFIX, levels)
    return out


def _defined(g: GraphProto) -> set[str]:
    names = {i.name for i in g.input} | {t.name for t in g.initializer}
    for n in g.node:
        names.update(o for o in n.output if o)
    return names


def _thread(g: GraphProto, wanted: dict[str, int], top: bool = False) -> list[tuple[str, int]]:
    """Thread the wanted values defined in ``g``'s nested bodies (and, unless ``top``, in ``g``
    itself) out as new outputs of ``g``, named ``name + SUFFIX``; returns (name, levels) in
    output order."""
    exposed: list[tuple[str, int]] = []
    if not top:
        for name in sorted(_defined(g) & set(wanted)):
            g.node.append(helper.make_node("Identity", [name], [name + SUFFIX], name=name + ".qc_expose"))
            g.output.append(helper.make_tensor_value_info(name + SUFFIX, wanted[name], None))
            exposed.append((name, 0))
    for node in list(g.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in THREADED:
            continue
        bodies = {a.name: a.g for a in node.attribute if a.type == AttributeProto.GRAPH}
        if node.op_type == "If":
            then_out = _thread(bodies["then_branch"], wanted)
            else_out = _thread(bodies["else_branch"], wanted)
            _pad(bodies["then_branch"], [name for name, _ in else_out], wanted, own=0)
            _pad(bodies["else_branch"], [name for name, _ in then_out], wanted, own=len(else_out))
            found = then_out + else_out
            levels_added = 0
        else:
            found = _thread(bodies["body"], wanted)
            levels_added = 1
        for name, levels in found:
            node.output.append(name + SUFFIX)
            exposed.append((name, levels + levels_added))
            g.output.append(helper.make_tensor_value_info(name + SUFFIX, wanted[name], None))
    return exposed


def _pad(branch: GraphProto, names: list[str], wanted: dict[str, int], own: int) -> None:
    """Empty-tensor outputs standing for the other branch's ``names``, placed before the last
    ``own`` outputs (this branch's new ones: 0 puts them at the end), so both branches line up."""
    if not names:
        return
    pads = []
    for name in names:
        pad = name + ".qc_pad"
        branch.node.append(helper.make_node("Constant", [], [pad], value=helper.make_tensor(pad, wanted[name], [0], []),
                                            name=pad))
        pads.append(helper.make_tensor_value_info(pad, wanted[name], None))
    outputs = list(branch.output)
    cut = len(outputs) - own
    del branch.output[:]
    branch.output.extend(outputs[:cut] + pads + outputs[cut:])
