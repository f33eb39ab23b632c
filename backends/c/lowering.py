"""What the lowering modules share: buffers, call arguments, the lowering state and the handler registry.

Every value gets a ``Buffer`` (arena, weight, model input/output, or an alias of another buffer
for Reshape-like ops); every op becomes one or more ``Call``s whose arguments are ints, floats,
int arrays (printed as C99 compound literals) and pointers into buffers. ``lower_ops`` and
``lower_quant`` register their op handlers here (``handler``); ``lower`` walks the graph.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qc.errors import QCError
from qc.ir import DType, Graph, Module, Op, TensorType, Value

CTYPE = {DType.f32: "float", DType.f16: "uint16_t", DType.f64: "double", DType.i8: "int8_t",
         DType.u8: "uint8_t", DType.i16: "int16_t", DType.u16: "uint16_t", DType.i32: "int32_t",
         DType.u32: "uint32_t", DType.i64: "int64_t", DType.u64: "uint64_t", DType.bool: "uint8_t"}
ALIGN = 16
# names a model input / output must not take in the generated run() function
RESERVED = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if inline int long "
    "register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while "
    "arena qc_a qc_w main qc_c qc_lo qc_hi qc_ctx qc_task qc_ntasks kv_cache past_len qc_cache_slot".split())


@dataclass(eq=False)
class Buffer:
    """Storage of one tensor: where it lives and what it holds."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    kind: str  # "arena" | "weight" | "input" | "output" | "alias"
    base: Buffer | None = None  # alias: the buffer whose storage this one shares
    data: bytes | None = None  # weight bytes (possibly packed)
    offset: int = 0  # arena offset or weight blob offset, set by memplan / emit
    nbytes_override: int | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        if self.nbytes_override is not None:
            return self.nbytes_override
        if self.data is not None:
            return len(self.data)
        return self.size * np.dtype(self.dtype.numpy).itemsize

    @property
    def root(self) -> Buffer:
        b = self
        while b.base is not None:
            b = b.base
        return b

    @property
    def ctype(self) -> str:
        return CTYPE[self.dtype]


@dataclass(frozen=True)
class Ptr:
    """A pointer argument: buffer + element offset, cast to ``ctype *`` (const when read)."""

    buf: Buffer
    elems: int = 0
    ctype: str | None = None
    const: bool = True


@dataclass(frozen=True)
class Ints:
    """An int array argument (a C99 compound literal)."""

    values: tuple[int, ...]
    ctype: str = "int"


@dataclass(frozen=True)
class Raw:
    """A literal C expression (enum names, NULL)."""

    text: str


@dataclass
class Call:
    fn: str
    args: list[Any]
    node: str
    kernel: str = ""
    scratch: list[Buffer] = field(default_factory=list)
    # control flow (lower_control): a C statement printed instead of fn(args), "{0}" ... its
    # rendered args; block +1 opens a C block, -1 closes one; loop: the opened block repeats
    text: str = ""
    block: int = 0
    loop: bool = False
    split: Any = None  # a split.Split when the call runs on the thread pool (split.plan, --threads)

    def buffers(self) -> list[tuple[Buffer, bool]]:
        """(buffer, written) for every pointer argument and scratch buffer."""
        out = [(a.buf, not a.const) for a in self.args if isinstance(a, Ptr)]
        return out + [(b, True) for b in self.scratch]


@dataclass
class Lowered:
    inputs: list[Buffer]
    outputs: list[Buffer]
    calls: list[Call]
    weights: list[Buffer]
    arena_buffers: list[Buffer]
    kernels: dict[str, int] = field(default_factory=dict)  # kernel description -> count
    input_names: list[str] = field(default_factory=list)  # the model's names of inputs / outputs
    output_names: list[str] = field(default_factory=list)
    cache_slots: list[int] = field(default_factory=list)  # the decode runtime's KV-cache slots, floats each
    max_context: int = 0  # the decode runtime: cache slots per head, and tokens per run
    step_tokens: int = 0


def node_name(op: Op) -> str:
    return op.name or (op.results[0].name if op.results and op.results[0] is not None else op.op_type)


HINT = "see docs/c-backend.md for the supported ops, or compile with --emit onnx"


class Unsupported(QCError):
    """One node the C backend cannot lower: its op type, node name and why ("" for an op type
    it has no lowering for). ``lower`` collects them and reports all in one error."""

    def __init__(self, op: Op, why: str = "", *, hint: str = HINT):
        self.op_type, self.node, self.why = op.op_type, node_name(op), why
        super().__init__(f"{op.op_type} is not supported by the C backend" + (f" ({why})" if why else ""),
                         where=f"node '{self.node}'", hint=hint)


def unsupported(op: Op, why: str = "", *, hint: str = HINT) -> Unsupported:
    return Unsupported(op, why, hint=hint)


def contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def broadcast_strides(shape: tuple[int, ...], out: tuple[int, ...]) -> tuple[int, ...]:
    st = contiguous(shape)
    pad = len(out) - len(shape)
    res = []
    for d in range(len(out)):
        i = d - pad
        res.append(0 if i < 0 or shape[i] == 1 and out[d] != 1 else st[i])
    return tuple(res)


def coalesce(shape: tuple[int, ...], *strides: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Drop size-1 dims and merge dims that are contiguous in every stride set (rank >= 1)."""
    dims = [(n, [s[d] for s in strides]) for d, n in enumerate(shape) if n != 1]
    merged: list[tuple[int, list[int]]] = []
    for n, st in dims:
        if merged:
            pn, pst = merged[-1]
            if all(pst[k] == st[k] * n for k in range(len(st))):
                merged[-1] = (pn * n, st)
                continue
        merged.append((n, st))
    if not merged:
        merged = [(1, [0] * len(strides))]
    out_shape = tuple(n for n, _ in merged)
    return (out_shape,) + tuple(tuple(st[k] for _, st in merged) for k in range(len(strides)))


HANDLERS: dict[str, Callable[[Lowering, Op], None]] = {}
"""ONNX op type -> the function that lowers one op of that type (registered with ``handler``)."""
DOMAIN_HANDLERS: dict[tuple[str, str], Callable[[Lowering, Op], None]] = {}
"""(domain, op type) -> its lowering, for ops outside the default domain (the ``qc`` fused ops)."""


def handler(*names: str, domain: str = ""):
    """Register the decorated function as the lowering of the op types *names* (of *domain*)."""
    def deco(fn):
        for n in names:
            if domain:
                DOMAIN_HANDLERS[(domain, n)] = fn
            else:
                HANDLERS[n] = fn
        return fn
    return deco


class Lowering:
    """The state of one lowering: buffers, calls, weights, the kernel variant (``lower`` walks)."""

    def __init__(self, module: Module, features: tuple[str, ...] = (), variant: str | None = None,
                 table: tuple = ()):
        self.module = module
        self.features = features
        self.table = table  # the target's cpu kernel-table entries (qc.targets.Kernel)
        self.threads = False  # --threads: scratch of splittable calls sized for every slice
        self.opset = module.opset("") or 13
        self.bufs: dict[int, Buffer] = {}
        self.calls: list[Call] = []
        self.weights: list[Buffer] = []
        self.arena: list[Buffer] = []
        self.kernels: dict[str, int] = {}
        self.cache_slots: dict[int, int] = {}  # qc.CachedAttention: KV-cache slot -> floats (the decode runtime)
        self.max_context = self.step_tokens = 0
        self._names: set[str] = set(RESERVED)
        self._counter = 0
        self.problems: list[QCError] = []  # the nodes lower_graph could not lower (one error at the end)
        self.missing: set[int] = set()  # values such a node left without a buffer (no static shape)
        self.consumed: set[int] = set()  # ops folded into a unit already lowered
        # values a fused kernel reads (or writes) in place of a consumed Transpose: id(value) ->
        # (the Transpose's input or output value, its element strides in the value's dim order)
        self.views: dict[int, tuple[Value, tuple[int, ...]]] = {}
        self.variant = variant
        self.loop_depth = 0  # C for loops open around the calls being added (lower_control)
        # lowers the ops of a graph in order (set by lower.lower; lower_control walks bodies with it)
        self.walk: Callable[[Graph], None] = lambda g: None

    # -- buffers -------------------------------------------------------------------------------
    def fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def c_ident(self, name: str) -> str:
        s = "".join(ch if ch.isalnum() else "_" for ch in name) or "v"
        if s[0].isdigit():
            s = "v_" + s
        base, i = s, 1
        while s in self._names:
            s = f"{base}_{i}"
            i += 1
        self._names.add(s)
        return s

    def weight(self, array: np.ndarray, dtype: DType | None = None, raw: bytes | None = None,
               shape: tuple[int, ...] | None = None) -> Buffer:
        arr = np.ascontiguousarray(array)
        dt = dtype or DType.from_numpy(arr.dtype)
        b = Buffer(self.fresh("w"), dt, tuple(shape if shape is not None else arr.shape), "weight",
                   data=raw if raw is not None else arr.tobytes())
        self.weights.append(b)
        return b

    def scratch(self, dtype: DType, nelems: int) -> Buffer:
        b = Buffer(self.fresh("s"), dtype, (nelems,), "arena")
        self.arena.append(b)
        return b

    def buf(self, v: Value) -> Buffer:
        b = self.bufs.get(id(v))
        if b is not None:
            return b
        if v.const is not None:
            t = v.const
            if not hasattr(t, "numpy"):
                raise QCError("sparse constants are not supported by the C backend", where=f"const '{v.name}'")
            arr = t.numpy()
            if t.dtype not in CTYPE:
                raise QCError(f"constant of dtype {t.dtype} is not supported by the C backend",
                              where=f"const '{v.name}'")
            b = self.weight(arr, t.dtype)
            self.bufs[id(v)] = b
            return b
        raise QCError(f"value '{v.name}' is used before it is computed", where=f"value '{v.name}'")

    def out(self, op: Op, i: int = 0) -> Buffer:
        """The buffer an op writes result i into (created on first request)."""
        v = op.results[i]
        b = self.bufs.get(id(v))
        if b is None:
            dt, shape = self.type_of(op, v)
            b = Buffer(self.fresh("t"), dt, shape, "arena")
            self.arena.append(b)
            self.bufs[id(v)] = b
        return b

    def alias(self, op: Op, src: Value, i: int = 0) -> None:
        """Result i shares src's storage (Reshape, Squeeze, Identity ...), or copies into an output."""
        v = op.results[i]
        dt, shape = self.type_of(op, v)
        sb = self.buf(src)
        existing = self.bufs.get(id(v))
        if existing is not None and existing.kind == "output":
            self.call(op, "qc_copy", [sb.nbytes, Ptr(sb), Ptr(existing, const=False)], "copy")
            return
        self.bufs[id(v)] = Buffer(self.fresh("a"), dt, shape, "alias", base=sb)

    def type_of(self, op: Op | None, v: Value) -> tuple[DType, tuple[int, ...]]:
        t = v.type
        where = f"node '{node_name(op)}'" if op is not None else f"model input/output '{v.name}'"
        if not isinstance(t, TensorType) or t.dtype is None or not t.is_static:
            raise QCError(f"'{v.name}' has no static shape ({t})", where=where,
                          hint="give every model input a static shape with --shape NAME=AxB")
        if t.dtype not in CTYPE:
            if op is None:
                raise QCError(f"dtype {t.dtype} is not supported by the C backend", where=where)
            raise unsupported(op, f"dtype {t.dtype}")
        return t.dtype, tuple(int(d) for d in t.shape)

    def shape(self, v: Value) -> tuple[int, ...]:
        if v.const is not None:
            return tuple(v.const.shape)
        t = v.type
        if not isinstance(t, TensorType) or not t.is_static:
            raise QCError(f"value '{v.name}' has no static shape", where=f"value '{v.name}'")
        return tuple(int(d) for d in t.shape)

    def dtype(self, v: Value) -> DType:
        return v.const.dtype if v.const is not None else v.type.dtype

    def const(self, op: Op, i: int, what: str) -> np.ndarray | None:
        """Operand i as a numpy array (None when absent); an error when it is not a constant."""
        if i >= len(op.operands) or op.operands[i] is None:
            return None
        v = op.operands[i]
        if v.const is None:
            raise unsupported(op, f"{what} must be a constant")
        return v.const.numpy()

    def call(self, op: Op | None, fn: str, args: list, kernel: str, scratch: list[Buffer] | None = None) -> None:
        where = f"{node_name(op)} ({op.op_type})" if op is not None else ""
        self.calls.append(Call(fn, args, where, kernel, scratch or []))
        self.kernels[kernel] = self.kernels.get(kernel, 0) + 1

    def stmt(self, op: Op, text: str, args: list, kernel: str, block: int = 0, loop: bool = False) -> None:
        """A control-flow statement (``if (*{0}) {``, ``}``, ``for (...) {``) in the schedule."""
        self.calls.append(Call("", args, f"{node_name(op)} ({op.op_type})", kernel, text=text, block=block,
                               loop=loop))
        if block >= 0:  # closing braces are not counted
            self.kernels[kernel] = self.kernels.get(kernel, 0) + 1
