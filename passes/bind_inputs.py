"""The ``bind-inputs`` pass; its docstring (``qc passes bind-inputs``) lists every rewrite."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from qc.errors import QCError
from qc.ir import DType
from qc.ir.core import Module, Value
from qc.ir.tensor import Tensor
from qc.ir.types import TensorType
from qc.pm import Pass, PassContext, register_pass

_BINDABLE = {DType.f32, DType.f16, DType.f64, DType.bf16, DType.i8, DType.u8, DType.i16, DType.u16,
             DType.i32, DType.u32, DType.i64, DType.u64, DType.bool}


@register_pass("bind-inputs")
@dataclass(frozen=True)
class BindInputs(Pass):
    """bind-inputs: turn model inputs into constants of the given values.

    Rewrites (main graph inputs only; ``values`` items are ``NAME:V`` or ``NAME:V1,V2,...``,
    e.g. ``bind-inputs{values=sr:16000}``; the dtype is the input's, the shape its own with a
    symbolic dimension sized by the count of values)::

        input %sr : i64[]                (values=sr:16000)     ->  const %sr : i64[] = 16000
        input %scale : f32[3]            (values=scale:1,2,4)  ->  const %scale : f32[3] = [1, 2, 4]
        input %ids : i64[?]              (values=ids:7,8)      ->  const %ids : i64[2] = [7, 8]
        input %w : f32[2] = <initializer> (values=w:0.5,0.5)   ->  const %w : f32[2] = [0.5, 0.5]

    Its readers now see a constant: ``fold-constants`` folds what depends on nothing else
    (e.g. ``Equal(%sr, 16000)``) and ``inline-if`` then replaces an If on it by the branch it takes.
    ``qc compile --bind sr=16000`` puts this pass first in the pipeline.

    Errors (QCError, nothing changed): a name that is no model input; a value that is not a
    number of the input's dtype or does not fit it (``i8`` takes -128..127, ``bool`` 0/1/true/false,
    a float overflowing ``f16`` ...); a count of values that does not fit the input's shape; an
    input that is not a numeric tensor. A malformed item or a name given twice fails when the
    pipeline is parsed.
    """

    values: tuple[str, ...] = ()
    """NAME:V or NAME:V1,V2,... items: the values the inputs are bound to"""

    def validate(self) -> None:
        parse_value_items(self.values)

    def run(self, module: Module, ctx: PassContext) -> bool:
        items = parse_value_items(self.values)
        g = module.graph
        inputs = {v.name: v for v in g.inputs}
        for name in items:
            if name not in inputs:
                raise QCError(f"bind-inputs: '{name}' is not a model input",
                              hint="inputs: " + (", ".join(sorted(inputs)) or "none"))
        arrays = {name: bound_array(inputs[name], texts) for name, texts in items.items()}
        for name, array in arrays.items():
            v = inputs[name]
            g.inputs.remove(v)
            v.const = Tensor.from_array(array, v.type.dtype)
            v.type = TensorType(v.type.dtype, array.shape)
            g.consts[name] = v  # an overridable initializer: the same Value, its data replaced
        return bool(arrays)


def parse_value_items(items: tuple[str, ...]) -> dict[str, list[str]]:
    """``("sr:16000", "x:1", "2")`` -> ``{"sr": ["16000"], "x": ["1", "2"]}``: an item without
    ``:`` continues the previous item's list (the pipeline splits option values at commas)."""
    out: dict[str, list[str]] = {}
    last = None
    for item in items:
        text = item.strip()
        name, colon, value = text.rpartition(":")
        if not colon:
            if last is None or not text:
                raise QCError(f"bind-inputs: cannot read value item '{item}'",
                              hint="write NAME:VALUE or NAME:V1,V2,..., e.g. values=sr:16000")
            out[last].append(text)
            continue
        if not name or not value.strip():
            raise QCError(f"bind-inputs: cannot read value item '{item}'",
                          hint="write NAME:VALUE or NAME:V1,V2,..., e.g. values=sr:16000")
        if name in out:
            raise QCError(f"bind-inputs: input '{name}' is bound twice", hint="give each input one item")
        out[name] = [value.strip()]
        last = name
    return out


def bound_array(v: Value, texts: list[str]) -> np.ndarray:
    """The values for input ``v`` as an array of its dtype and (completed) shape; a QCError
    naming the input when a value or the count does not fit."""
    where = f"input '{v.name}'"
    t = v.type
    if not isinstance(t, TensorType) or t.dtype not in _BINDABLE:
        raise QCError(f"bind-inputs: the input is not a numeric tensor ({t})", where=where)
    values = [_number(v.name, t.dtype, s) for s in texts]
    array = np.array(values, dtype=t.dtype.numpy)
    return array.reshape(_shape(v.name, t, len(values)))


def _number(name: str, dt: DType, text: str) -> int | float | bool:
    where = f"input '{name}'"
    if dt is DType.bool:
        if text.lower() in ("1", "true", "0", "false"):
            return text.lower() in ("1", "true")
        raise QCError(f"bind-inputs: '{text}' is not a bool", where=where, hint="give 0, 1, true or false")
    if dt.is_integer:
        info = np.iinfo(dt.numpy)
        span = f"an integer in {info.min}..{info.max}"
        try:
            n = int(text, 0)
        except ValueError:
            raise QCError(f"bind-inputs: '{text}' is not an integer, the input is {dt}", where=where,
                          hint=f"give {span}") from None
        if not info.min <= n <= info.max:
            raise QCError(f"bind-inputs: {n} does not fit the input's dtype {dt}", where=where, hint=f"give {span}")
        return n
    try:
        x = float(text)
    except ValueError:
        raise QCError(f"bind-inputs: '{text}' is not a number, the input is {dt}", where=where) from None
    with np.errstate(over="ignore"):
        overflows = math.isfinite(x) and not np.isfinite(np.array(x).astype(dt.numpy))
    if overflows:
        raise QCError(f"bind-inputs: {text} overflows the input's dtype {dt}", where=where)
    return x


def _shape(name: str, t: TensorType, count: int) -> tuple[int, ...]:
    """The input's shape with its symbolic dimensions sized so that it holds ``count`` values."""
    if t.shape is None:
        return () if count == 1 else (count,)
    known = math.prod(d for d in t.shape if isinstance(d, int))
    symbolic = [i for i, d in enumerate(t.shape) if not isinstance(d, int)]
    shape = [d if isinstance(d, int) else 1 for d in t.shape]
    if len(symbolic) == 1 and known and count % known == 0:
        shape[symbolic[0]] = count // known
    dims = ", ".join(str(d) for d in t.shape)
    if math.prod(shape) != count:
        holds = f"{known} element{'s' if known != 1 else ''}" if not symbolic else f"a multiple of {known} elements"
        values = f"{count} value{'s' if count != 1 else ''}"
        raise QCError(f"bind-inputs: {values} for the shape [{dims}], which holds {holds}",
                      where=f"input '{name}'", hint=f"give {known} value{'s' if known != 1 else ''}" if not symbolic
                      else "give a count of values the shape can hold")
    return tuple(shape)


def bind_texts(bind: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{"sr": 16000, "x": [1, 2]}`` -> ``{"sr": ["16000"], "x": ["1", "2"]}``: the values as the
    pass reads them (``bound_array`` turns them into the input's dtype and shape)."""
    out = {}
    for name, value in bind.items():
        flat = np.asarray(value).reshape(-1).tolist()
        if not flat:
            raise QCError(f"bind: no value for input '{name}'", hint="give a number or a list of numbers")
        out[name] = [_format(v) for v in flat]
    return out


def bind_spec(bind: Mapping[str, Any]) -> str:
    """``{"sr": 16000, "x": [1, 2]}`` -> ``bind-inputs{values=sr:16000,x:1,2}`` (for ``qc.compile(bind=...)``)."""
    items = [f"{name}:" + ",".join(texts) for name, texts in bind_texts(bind).items()]
    return "bind-inputs{values=" + ",".join(items) + "}"


def parse_bind(text: str) -> dict[str, list[str]]:
    """The CLI's ``--bind`` text: ``'sr=16000,x=1,2'`` -> ``{"sr": ["16000"], "x": ["1", "2"]}``
    (an item without ``=`` continues the previous list)."""
    out: dict[str, list[str]] = {}
    last = None
    for item in text.split(","):
        name, eq, value = item.strip().partition("=")
        if not eq:
            if last is None or not item.strip():
                raise QCError(f"--bind: cannot read '{item}'", hint="write NAME=VALUE or NAME=V1,V2,..., e.g. sr=16000")
            out[last].append(item.strip())
            continue
        if not name.strip() or not value.strip():
            raise QCError(f"--bind: cannot read '{item}'", hint="write NAME=VALUE or NAME=V1,V2,..., e.g. sr=16000")
        if name.strip() in out:
            raise QCError(f"--bind: input '{name.strip()}' is bound twice", hint="give each input one value")
        last = name.strip()
        out[last] = [value.strip()]
    return out


def _format(v: Any) -> str:
    if isinstance(v, str):  # the CLI's text, read by the pass
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(float(v)) if isinstance(v, float) else str(int(v))
