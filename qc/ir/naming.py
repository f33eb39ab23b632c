"""Give every value a unique, non-empty name (the printer and the ONNX writer rely on it)."""
from __future__ import annotations

from .core import Graph, Module, Value


def assign_unique_names(module: Module) -> None:
    """Rename values in place so that names are unique per scope.

    The main graph and its nested subgraphs share one namespace (ONNX forbids shadowing);
    each function body has its own. The graph's inputs and outputs claim their names first,
    then consts and op results in order; a later duplicate or an empty name gets the first
    free ``base_N``. The result depends only on the IR.
    """
    _name_scope([module.graph])
    for f in module.functions:
        _name_scope([f.body])


def _name_scope(roots: list[Graph]) -> None:
    taken: set[str] = set()
    counters: dict[str, int] = {}
    claimed: set[int] = set()

    def claim(v: Value) -> None:
        if id(v) in claimed:
            return
        claimed.add(id(v))
        name = v.name
        if name and name not in taken:
            taken.add(name)
            return
        base = name or "v"
        n = counters.get(base, 0)
        while True:
            n += 1
            candidate = f"{base}_{n}"
            if candidate not in taken:
                break
        counters[base] = n
        taken.add(candidate)
        v.name = candidate

    def visit(g: Graph) -> None:
        for v in g.consts.values():
            claim(v)
        if any(v.name != k for k, v in g.consts.items()):
            g.consts = {v.name: v for v in g.consts.values()}
        for v in g.inputs:
            if v.const is None:
                claim(v)
        for op in g:
            for sub in op.subgraphs():
                visit(sub)
            for r in op.results:
                if r is not None:
                    claim(r)

    for g in roots:  # the interface first: input and output names are what users feed and fetch
        for v in g.inputs:
            claim(v)
        for v in g.outputs:
            claim(v)
    for g in roots:
        visit(g)
