"""Targets as data: one TOML file per built-in target in this folder, or a user's own file.

A target names its ISA features, its devices (one preferred), the C backend's compiler flags
and qemu machine where they apply, and a kernel table per device: which (op, activation dtype,
weight dtype, output dtype, weight granularity, zero-point kind, constant weights) combinations
have a kernel there, at what relative cost (float32 on the device's CPU = 1.0), and where that
fact comes from. See docs/targets.md for the schema and the sources.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..errors import QCError, did_you_mean

_DIR = os.path.dirname(__file__)

DTYPES = ("float32", "float16", "bfloat16", "float64", "int32", "int16", "uint16",
          "int8", "uint8", "int4", "uint4")
DEVICES = ("cpu", "gpu", "npu")
GRANULARITIES = ("tensor", "channel", "block", "any")
ZERO_POINTS = ("symmetric", "asymmetric", "any")
STATUSES = ("native", "emulated")
BACKENDS = ("onnx", "c", "tflite")


@dataclass(frozen=True)
class Kernel:
    """One kernel-table entry. ``granularity``/``zero_point`` "any" match every kind;
    ``const_weight`` true means the kernel needs constant (initializer) weights."""
    op: str
    act: str
    weight: str
    out: str
    granularity: str
    zero_point: str
    const_weight: bool
    cost: float
    status: str
    source: str
    c_kernel: str | None = None  # C targets: the qc_* kernel of the C backend that implements the entry

    def matches(self, op: str, act: str, weight: str, out: str, granularity: str = "any",
                zero_point: str = "any", const_weight: bool = True) -> bool:
        return (self.op == op and self.act == act and self.weight == weight and self.out == out
                and (self.granularity == "any" or granularity == "any" or self.granularity == granularity)
                and (self.zero_point == "any" or zero_point == "any" or self.zero_point == zero_point)
                and (const_weight or not self.const_weight))

    def describe(self) -> str:
        """One line: ``MatMul uint8 x int8 -> uint8 [tensor, const] cost 0.35 native``."""
        quals = [q for q in (self.granularity, self.zero_point) if q != "any"]
        if self.const_weight:
            quals.append("const")
        qual = f" [{', '.join(quals)}]" if quals else ""
        return f"{self.op} {self.act} x {self.weight} -> {self.out}{qual} cost {self.cost:g} {self.status}"


@dataclass(frozen=True)
class Memory:
    """RAM and flash of the parts a target stands for, in bytes. ``ram`` / ``flash`` are the
    typical part a C compile's arena and weights are checked against (``qc.tools.budget``);
    ``ram_range`` / ``flash_range`` span the common parts; ``enforce`` false (application
    processors: RAM in GB) reports the figures without checking them."""
    ram: int
    flash: int
    ram_range: tuple[int, int]
    flash_range: tuple[int, int]
    enforce: bool
    source: str
    note: str | None = None


@dataclass(frozen=True)
class OnnxLimits:
    """The ``[onnx]`` table: the highest ONNX IR version and ai.onnx opset the target's runtime
    loads. The ONNX backend writes the lowest versions the model needs and refuses a model that
    needs more (``None``: no limit beyond the onnx package's own)."""
    runtime: str
    max_ir_version: int | None
    max_opset: int | None
    source: str
    nbits_int8_rows: str = "none"
    """which com.microsoft.MatMulNBits with accuracy_level 4 the runtime computes with A quantized
    to int8 per row over the whole K (one scale per row, not per block): "none", "symmetric"
    (weights without zero points: onnxruntime arm64's KleidiAI kernels) or "all"; the
    guardrail ``int8-rows-outliers`` reads it"""


@dataclass(frozen=True)
class VelaConfig:
    """The ``[vela]`` table of an Ethos-U target: how Arm's Vela compiles its TFLite
    (``vela --accelerator-config ... --system-config ... --memory-mode ...``, configurations of
    Vela's own ``Arm/vela.ini``)."""

    accelerator_config: str
    system_config: str
    memory_mode: str
    source: str


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    features: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu",)
    backend: str = "onnx"
    preferred_device: str = "cpu"
    cc: str | None = None
    cflags: tuple[str, ...] = ()
    qemu: tuple[str, ...] = ()
    qemu_note: str | None = None
    kernels: dict = field(default_factory=dict, compare=False)
    other_ops: dict = field(default_factory=dict, compare=False)
    unsupported_ops: dict = field(default_factory=dict, compare=False)
    copy_cost: float = 0.0
    memory: Memory | None = None
    onnx: OnnxLimits | None = None
    vela: VelaConfig | None = None
    data: dict = field(default_factory=dict, compare=False, repr=False)

    def kernel_for(self, op: str, act_dtype: str, weight_dtype: str, out_dtype: str,
                   granularity: str = "any", zero_point: str = "any",
                   const_weight: bool = True) -> list[tuple[str, Kernel]]:
        """Every (device, kernel) whose entry covers this combination, cheapest first."""
        hits = [(dev, k) for dev in self.devices for k in self.kernels.get(dev, ())
                if k.matches(op, act_dtype, weight_dtype, out_dtype, granularity, zero_point, const_weight)]
        return sorted(hits, key=lambda dk: dk[1].cost)

    def runs_other_op(self, device: str, dtype: str | None) -> bool:
        """Does ``device`` run ops outside the kernel table (elementwise, norms, data movement) on
        ``dtype``? Without an ``other_ops`` table, only the preferred device does, on every dtype."""
        if not self.other_ops:
            return device == self.preferred_device
        allowed = self.other_ops.get(device, ())
        return "*" in allowed or (dtype is not None and dtype in allowed)

    def runs_op(self, device: str, op_type: str, dtype: str | None) -> bool:
        """``runs_other_op``, minus the op types the target lists as missing on ``device``."""
        return op_type not in self.unsupported_ops.get(device, ()) and self.runs_other_op(device, dtype)


def builtin_targets() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(_DIR) if f.endswith(".toml"))


def load_target(name_or_path: str) -> Target:
    """A built-in target by name, or a target file (``./my-soc.toml``)."""
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        path = name_or_path
        if not os.path.isfile(path):
            raise QCError("no such target file", where=path)
    else:
        path = os.path.join(_DIR, f"{name_or_path}.toml")
        if not os.path.isfile(path):
            raise QCError(f"unknown target '{name_or_path}'",
                          hint=did_you_mean(name_or_path, builtin_targets()) + "known targets: "
                          + ", ".join(builtin_targets()) + " (or a path to a .toml file)")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as e:
        raise QCError(f"cannot read target: {e}", where=path) from None
    return _validate(data, raw.decode("utf-8"), path)


# --- validation ------------------------------------------------------------------------------

_TOP = {"name": str, "description": str, "features": list, "devices": list, "preferred_device": str,
        "backend": str, "compiler": dict, "qemu": dict, "kernels": dict, "other_ops": dict,
        "unsupported_ops": dict, "copy_cost": (int, float), "memory": dict,
        "onnx": dict, "vela": dict}
_COMPILER = {"cc": str, "flags": list}
_QEMU = {"command": str, "args": list, "note": str}
_MEMORY = {"ram": int, "flash": int, "ram_range": list, "flash_range": list, "enforce": bool, "source": str,
           "note": str}
_MEMORY_REQUIRED = ("ram", "flash", "source")
_VELA = {"accelerator_config": str, "system_config": str, "memory_mode": str, "source": str}
_ONNX = {"runtime": str, "max_ir_version": int, "max_opset": int, "source": str, "nbits_int8_rows": str,
         "nbits_int8_rows_source": str}
_KERNEL = {"op": str, "act": str, "weight": str, "out": str, "granularity": str, "zero_point": str,
           "const_weight": bool, "cost": (int, float), "status": str, "source": str, "c_kernel": str}
_KERNEL_REQUIRED = ("op", "act", "weight", "out", "cost", "source")
_TYPE_NAMES = {str: "a string", int: "an integer", list: "an array", dict: "a table", bool: "a boolean",
               (int, float): "a number"}


def _line_of(text: str, key: str) -> int | None:
    """The line of dotted ``key`` (``kernels.cpu[3].cost``, ``compiler.flags``, ``name``) in ``text``.

    Walks the file's table headers: ``[[kernels.cpu]]`` headers are counted to find entry 3, then
    the first ``cost =`` inside that entry; a key not written out gives the entry's header line.
    """
    parts = key.split(".")
    m = re.fullmatch(r"(\w+)\[(\d+)\]", parts[-2]) if len(parts) >= 3 else None
    lines = text.splitlines()
    if m and len(parts) == 3:  # kernels.cpu[3].cost
        header, index, leaf = f"{parts[0]}.{m.group(1)}", int(m.group(2)), parts[2]
        want = re.compile(r"\s*\[\[\s*" + re.escape(header) + r"\s*\]\]")
        count, start = -1, None
        for i, line in enumerate(lines):
            if want.match(line):
                count += 1
                if count == index:
                    start = i
                    break
        if start is None:
            return None
        return _find_key(lines, start + 1, leaf) or start + 1
    if len(parts) == 2 and "[" not in parts[1]:  # compiler.flags or kernels.cpu
        head = re.compile(r"\s*\[\[?\s*" + re.escape(key) + r"\s*\]\]?")
        for i, line in enumerate(lines):
            if head.match(line):
                return i + 1
        sect = re.compile(r"\s*\[\s*" + re.escape(parts[0]) + r"\s*\]")
        for i, line in enumerate(lines):
            if sect.match(line):
                return _find_key(lines, i + 1, parts[1]) or i + 1
        return None
    if len(parts) == 1:
        return _find_key(lines, 0, re.sub(r"\[\d+\]$", "", parts[0]))
    return None


def _find_key(lines: list[str], start: int, leaf: str) -> int | None:
    pat = re.compile(r"\s*" + re.escape(leaf) + r"\s*=")
    for i in range(start, len(lines)):
        if lines[i].lstrip().startswith("["):
            return None
        if pat.match(lines[i]):
            return i + 1
    return None


def _validate(data: dict, text: str, path: str) -> Target:
    def fail(key: str, message: str, hint: str | None = None):
        line = _line_of(text, key)
        raise QCError(f"{key}: {message}", where=f"{path}:{line}" if line else path, hint=hint)

    def check_keys(table: dict, schema: dict, prefix: str):
        for k, v in table.items():
            key = f"{prefix}{k}"
            if k not in schema:
                fail(key, "unknown key", hint="known keys: " + ", ".join(schema))
            if not isinstance(v, schema[k]) or (schema[k] == (int, float) and isinstance(v, bool)):
                fail(key, f"expected {_TYPE_NAMES[schema[k]]}, got {type(v).__name__} {v!r}")

    def check_enum(key: str, value: str, allowed: tuple[str, ...], what: str):
        if value not in allowed:
            fail(key, f"unknown {what} '{value}'", hint=f"one of: {', '.join(allowed)}")

    def strings(key: str, value: list) -> tuple[str, ...]:
        for i, v in enumerate(value):
            if not isinstance(v, str):
                fail(key, f"element {i} should be a string, got {type(v).__name__} {v!r}")
        return tuple(value)

    check_keys(data, _TOP, "")
    if "name" not in data:
        fail("name", "missing (every target file needs name = \"...\")")
    features = strings("features", data.get("features", []))
    devices = strings("devices", data.get("devices", ["cpu"]))
    for d in devices:
        check_enum("devices", d, DEVICES, "device")
    preferred = data.get("preferred_device", devices[0] if devices else "cpu")
    if preferred not in devices:
        fail("preferred_device", f"'{preferred}' is not one of the target's devices ({', '.join(devices)})")
    backend = data.get("backend", "onnx")
    check_enum("backend", backend, BACKENDS, "backend")
    compiler, qemu = data.get("compiler", {}), data.get("qemu", {})
    check_keys(compiler, _COMPILER, "compiler.")
    check_keys(qemu, _QEMU, "qemu.")
    cflags = strings("compiler.flags", compiler.get("flags", []))
    qemu_cmd = (qemu["command"], *strings("qemu.args", qemu.get("args", []))) if "command" in qemu else ()

    kernels: dict[str, list[Kernel]] = {}
    for dev, entries in data.get("kernels", {}).items():
        if dev not in devices:
            fail(f"kernels.{dev}", f"'{dev}' is not one of the target's devices ({', '.join(devices)})")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            fail(f"kernels.{dev}", "expected an array of tables ([[kernels.{dev}]] entries)".replace("{dev}", dev))
        table = []
        for i, e in enumerate(entries):
            prefix = f"kernels.{dev}[{i}]."
            check_keys(e, _KERNEL, prefix)
            for k in _KERNEL_REQUIRED:
                if k not in e:
                    fail(f"kernels.{dev}[{i}].{k}", "missing")
            for k in ("act", "weight", "out"):
                check_enum(prefix + k, e[k], DTYPES, "dtype")
            check_enum(prefix + "granularity", e.get("granularity", "any"), GRANULARITIES, "granularity")
            check_enum(prefix + "zero_point", e.get("zero_point", "any"), ZERO_POINTS, "zero-point kind")
            check_enum(prefix + "status", e.get("status", "native"), STATUSES, "status")
            if e["cost"] <= 0:
                fail(prefix + "cost", f"must be positive, got {e['cost']}")
            if "c_kernel" in e:
                if backend != "c" and "compiler" not in data:
                    fail(prefix + "c_kernel", f"names a C kernel, but the target's backend is '{backend}'",
                         hint='only targets with backend = "c" (or a [compiler] for --emit c) name C kernels')
                if not re.fullmatch(r"qc_[a-z0-9_]+", e["c_kernel"]):
                    fail(prefix + "c_kernel", f"'{e['c_kernel']}' is not a C kernel name",
                         hint="a qc_* function of the C runtime, e.g. qc_gemm_s8_dotprod (docs/c-backend.md)")
            table.append(Kernel(op=e["op"], act=e["act"], weight=e["weight"], out=e["out"],
                                granularity=e.get("granularity", "any"), zero_point=e.get("zero_point", "any"),
                                const_weight=e.get("const_weight", False), cost=float(e["cost"]),
                                status=e.get("status", "native"), source=e["source"], c_kernel=e.get("c_kernel")))
        kernels[dev] = table
    def per_device(table: str, what: str) -> dict[str, tuple[str, ...]]:
        out = {}
        for dev, items in data.get(table, {}).items():
            key = f"{table}.{dev}"
            if dev not in devices:
                fail(key, f"'{dev}' is not one of the target's devices ({', '.join(devices)})")
            if not isinstance(items, list):
                fail(key, f"expected an array of {what}, got {type(items).__name__} {items!r}")
            out[dev] = strings(key, items)
        return out

    other_ops = per_device("other_ops", 'dtypes (or ["*"])')
    for dev, dtypes in other_ops.items():
        for d in dtypes:
            if d != "*":
                check_enum(f"other_ops.{dev}", d, DTYPES + ("int64", "bool"), "dtype")
    unsupported = per_device("unsupported_ops", "op types")
    copy_cost = float(data.get("copy_cost", 0.0))
    if copy_cost < 0:
        fail("copy_cost", f"must not be negative, got {copy_cost}")
    memory = _memory(data.get("memory"), fail, check_keys)
    onnx_limits = _onnx(data.get("onnx"), fail, check_keys)
    vela = None
    if "vela" in data:
        check_keys(data["vela"], _VELA, "vela.")
        for k in _VELA:
            if k not in data["vela"]:
                fail(f"vela.{k}", "missing", hint="[vela] gives Vela's accelerator_config, system_config, "
                     "memory_mode and where they come from")
        vela = VelaConfig(**data["vela"])
    if backend == "tflite" and vela is None:
        fail("backend", "backend 'tflite' compiles through Vela: the target needs a [vela] table")
    return Target(name=data["name"], description=data.get("description", ""), features=features,
                  devices=devices, backend=backend, preferred_device=preferred, cc=compiler.get("cc"),
                  cflags=cflags, qemu=qemu_cmd, qemu_note=qemu.get("note"), kernels=kernels,
                  other_ops=other_ops, unsupported_ops=unsupported, copy_cost=copy_cost, memory=memory,
                  onnx=onnx_limits, vela=vela, data=data)


def _memory(table: dict | None, fail, check_keys) -> Memory | None:
    """The ``[memory]`` table: sizes in bytes, each range [smallest, largest] around its typical size."""
    if table is None:
        return None
    check_keys(table, _MEMORY, "memory.")
    for k in _MEMORY_REQUIRED:
        if k not in table:
            fail(f"memory.{k}", "missing", hint="[memory] needs ram, flash (bytes) and source")
    sizes = {}
    for k in ("ram", "flash"):
        if isinstance(table[k], bool) or table[k] <= 0:
            fail(f"memory.{k}", f"must be a positive number of bytes, got {table[k]!r}")
        rng = table.get(f"{k}_range", [table[k], table[k]])
        if (len(rng) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in rng)
                or not rng[0] <= table[k] <= rng[1]):
            fail(f"memory.{k}_range", f"expected [smallest, largest] bytes around {k} = {table[k]}, got {rng!r}")
        sizes[k] = (table[k], (rng[0], rng[1]))
    return Memory(ram=sizes["ram"][0], flash=sizes["flash"][0], ram_range=sizes["ram"][1],
                  flash_range=sizes["flash"][1], enforce=table.get("enforce", True), source=table["source"],
                  note=table.get("note"))


def _onnx(table: dict | None, fail, check_keys) -> OnnxLimits | None:
    """The ``[onnx]`` table: ``runtime`` and ``source`` (strings), ``max_ir_version`` (3 or more)
    and ``max_opset`` (7 or more), each optional."""
    if table is None:
        return None
    check_keys(table, _ONNX, "onnx.")
    for k in ("runtime", "source"):
        if k not in table:
            fail(f"onnx.{k}", "missing", hint="[onnx] names the runtime and where its limits come from")
    for k, lowest in (("max_ir_version", 3), ("max_opset", 7)):
        if k in table and (isinstance(table[k], bool) or table[k] < lowest):
            fail(f"onnx.{k}", f"must be an integer of at least {lowest}, got {table[k]!r}")
    rows = table.get("nbits_int8_rows", "none")
    if rows not in NBITS_INT8_ROWS:
        fail("onnx.nbits_int8_rows", f"must be one of {', '.join(NBITS_INT8_ROWS)}, got {rows!r}")
    return OnnxLimits(runtime=table["runtime"], max_ir_version=table.get("max_ir_version"),
                      max_opset=table.get("max_opset"), source=table["source"], nbits_int8_rows=rows)


NBITS_INT8_ROWS = ("none", "symmetric", "all")
