"""The pass manager: pass registry, typed options, pipeline strings, instruments.

A pass is a frozen dataclass whose fields are its options::

    @register_pass("fold-double-cast")
    @dataclass(frozen=True)
    class FoldDoubleCast(Pass):
        '''Cast(Cast(x, to=A), to=B) -> Cast(x, to=B) when A is at least as wide as B.'''
        keep_f16: bool = False                    # fold-double-cast{keep-f16=true}

        def run(self, module: Module, ctx: PassContext) -> bool:   # True when it changed the IR
            ...

Pipelines are MLIR-style strings, ``fold-constants,cse{max-ops=10},dce``, and print back
exactly as given (``str(PassManager.parse(s)) == s``).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import time
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TextIO, TypeVar

from qc.calib.data import CalibrationData
from qc.calib.stats import CalibrationStats
from qc.errors import QCError, did_you_mean
from qc.ir.core import Module, Op
from qc.quant.outliers import OutlierSplit
from qc.targets import Target, load_target
from qc.targets.placement import Placement

_REGISTRY: dict[str, type[Pass]] = {}
_NAMED_PIPELINES: dict[str, tuple[str, str]] = {}
_LOADED_FILES: dict[str, list[str]] = {}  # realpath of a --load-pass file -> the passes it registered
_ENTRY_POINTS_LOADED = False


class PassError(QCError):
    """A pass failed; the message names the pass, its options and what ran before it."""

    internal: bool = False
    """a crash of the pass itself (a bug), not an error in its input"""


@dataclass(frozen=True)
class Pass:
    """Base class of all passes. Subclasses are frozen dataclasses; fields are options."""

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the options (ranges, regexes, combinations); raise QCError. Runs when the pass is
        built, so a bad option fails when the pipeline is parsed, before any model is read."""

    def run(self, module: Module, ctx: PassContext) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def spec(self) -> str:
        """The pass as written in a pipeline (explicit options only, as given)."""
        raw: list[tuple[str, str]] = getattr(self, "_raw_options", None) or [
            (f.name.replace("_", "-"), format_option(getattr(self, f.name)))
            for f in dataclasses.fields(self) if getattr(self, f.name) != _default(f)]
        if not raw:
            return self.name
        return self.name + "{" + ",".join(f"{k}={v}" for k, v in raw) + "}"

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))


_PassClass = TypeVar("_PassClass", bound="type[Pass]")


def register_pass(name: str) -> Callable[[_PassClass], _PassClass]:
    """Class decorator: make a Pass available under ``name`` in pipelines."""

    def wrap(cls: _PassClass) -> _PassClass:
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise TypeError(f"@register_pass({name!r}) needs a subclass of qc.pm.Pass")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise QCError(f"pass name '{name}' is registered twice: by {existing.__module__}.{existing.__qualname__} "
                          f"and by {cls.__module__}.{cls.__qualname__}")
        if not dataclasses.is_dataclass(cls) or "__dataclass_fields__" not in cls.__dict__:
            dataclass(frozen=True)(cls)   # in place: without slots=True it returns cls itself
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def register_pipeline(name: str, spec: str, description: str = "") -> None:
    """A named pipeline (``--pipeline NAME``) that expands to ``spec``."""
    _NAMED_PIPELINES[name] = (spec, description)


def named_pipelines() -> dict[str, tuple[str, str]]:
    return dict(_NAMED_PIPELINES)


def load_entry_point_passes() -> None:
    """Passes of installed packages that declare the entry-point group ``qc.passes``."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in importlib.metadata.entry_points(group="qc.passes"):
        try:
            loaded = ep.load()
        except Exception as e:
            raise QCError(f"cannot load pass plugin '{ep.name}' ({ep.value}): {type(e).__name__}: {e}") from None
        if isinstance(loaded, type) and issubclass(loaded, Pass) and not loaded.name:
            register_pass(ep.name)(loaded)


def load_pass_file(path: str) -> list[str]:
    """Import a user's Python file so that its @register_pass classes register; returns their names.

    Loading the same file again (``--load-pass f.py --load-pass f.py``) returns the same names."""
    if not os.path.isfile(path):
        raise QCError("no such pass file", where=path)
    real = os.path.realpath(path)
    if real in _LOADED_FILES:
        return list(_LOADED_FILES[real])
    before = set(_REGISTRY)
    module_name = "qc_user_pass_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise QCError("not a Python file", where=path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = mod
    try:
        spec.loader.exec_module(mod)
    except QCError:
        raise
    except Exception as e:
        raise QCError(f"the pass file raised {type(e).__name__}: {e}", where=path) from None
    added = sorted(set(_REGISTRY) - before)
    if not added:
        raise QCError("the file registers no pass", where=path,
                      hint="decorate a Pass subclass with @register_pass('my-pass')")
    _LOADED_FILES[real] = added
    return added


def all_passes() -> dict[str, type[Pass]]:
    load_entry_point_passes()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    passes = all_passes()
    if name not in passes:
        raise QCError(f"unknown pass '{name}'", hint=did_you_mean(name, passes) + "known passes: "
                      + ", ".join(passes) + "; a pass of your own loads with --load-pass FILE.py")
    return passes[name]


# -- options ---------------------------------------------------------------------------------
def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def format_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(format_option(v) for v in value)
    if value is None:
        return "none"
    return str(value)


def convert_option(pass_name: str, key: str, raw: str, annotation: Any) -> Any:
    """Text -> the option's declared type (bool, int, float, str, Literal, Optional, tuple)."""
    def bad(expected: str) -> QCError:
        return QCError(f"option '{key}' of pass '{pass_name}' expects {expected}, got '{raw}'")

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if raw.lower() == "none" and len(inner) < len(args):
            return None
        return convert_option(pass_name, key, raw, inner[0] if len(inner) == 1 else str)
    if origin is typing.Literal:
        for a in args:
            if str(a) == raw:
                return a
        raise bad("one of " + "|".join(str(a) for a in args))
    if origin in (tuple, list):
        item = args[0] if args else str
        parts = [p for p in raw.split(",") if p != ""] if raw else []
        return tuple(convert_option(pass_name, key, p, item) for p in parts)
    if annotation is bool:
        if raw.lower() in ("true", "1", "yes", "on"):
            return True
        if raw.lower() in ("false", "0", "no", "off"):
            return False
        raise bad("true or false")
    if annotation is int:
        try:
            return int(raw, 0)
        except ValueError:
            raise bad("an integer") from None
    if annotation is float:
        try:
            return float(raw)
        except ValueError:
            raise bad("a number") from None
    return raw


# -- pipeline strings ------------------------------------------------------------------------
def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside braces, parentheses and double quotes."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, c in enumerate(text):
        if c == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif c in "{(":
            depth += 1
        elif c in "})":
            depth -= 1
            if depth < 0:
                raise QCError(f"unbalanced '{c}' at column {i + 1} of pipeline '{text}'")
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth or quoted:
        raise QCError(f"unbalanced braces or quotes in pipeline '{text}'")
    parts.append(text[start:])
    return parts


@dataclass(frozen=True)
class Fixpoint(Pass):
    """``fixpoint(a,b,c)``: run the passes in order, again and again, until a whole round
    changes nothing (at most ``max_rounds`` rounds). Every inner run is an ordinary pass run:
    instruments and the verifier see each one."""

    passes: tuple[Pass, ...] = ()
    max_rounds: int = 16

    name: ClassVar[str] = "fixpoint"

    def spec(self) -> str:
        rounds = f"{{max-rounds={self.max_rounds}}}" if self.max_rounds != 16 else ""
        return f"fixpoint{rounds}(" + ",".join(p.spec() for p in self.passes) + ")"

    def run(self, module: Module, ctx: PassContext) -> bool:  # pragma: no cover - the manager expands it
        raise PassError("a fixpoint group runs inside a PassManager")


def parse_pass(text: str) -> Pass:
    text = text.strip()
    if text.startswith("fixpoint") and text.endswith(")") and "(" in text:
        return _parse_fixpoint(text)
    name, brace, rest = text.partition("{")
    name = name.strip()
    if not name:
        raise QCError(f"empty pass name in pipeline element '{text}'")
    cls = get_pass(name)
    raw: list[tuple[str, str]] = []
    if brace:
        if not rest.endswith("}"):
            raise QCError(f"pass '{name}': options must end with '}}' in '{text}'")
        for item in split_top(rest[:-1]):
            if not item.strip():
                continue
            key, eq, value = item.partition("=")
            if not eq:
                if not raw:
                    raise QCError(f"pass '{name}': option '{item}' needs a value (key=value)")
                raw[-1] = (raw[-1][0], raw[-1][1] + "," + item.strip())  # a list continues
                continue
            raw.append((key.strip(), value.strip()))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw:
        attr = key.replace("-", "_")
        if attr not in fields:
            valid = ", ".join(f.replace("_", "-") for f in fields) or "none"
            raise QCError(f"pass '{name}' has no option '{key}'", hint=f"its options: {valid}")
        unquoted = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
        kwargs[attr] = convert_option(name, key, unquoted, hints.get(attr, str))
    try:
        instance = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise QCError(f"pass '{name}': {e}") from None
    object.__setattr__(instance, "_raw_options", raw)
    instance.validate()  # again, now that it knows which options were written out
    return instance


def _parse_fixpoint(text: str) -> Fixpoint:
    head, _, body = text[:-1].partition("(")
    head = head.strip()
    rounds = 16
    if head != "fixpoint":
        opts = head[len("fixpoint"):].strip()
        key, eq, value = opts.strip("{}").partition("=")
        if not (opts.startswith("{") and opts.endswith("}") and key.strip() == "max-rounds" and eq):
            raise QCError(f"fixpoint group: expected fixpoint(...) or fixpoint{{max-rounds=N}}(...), got '{head}'")
        rounds = int(convert_option("fixpoint", "max-rounds", value.strip(), int))
        if rounds < 1:
            raise QCError(f"fixpoint group: max-rounds must be at least 1, got {rounds}")
    inner = tuple(parse_pass(item) for item in split_top(body) if item.strip())
    if not inner:
        raise QCError(f"fixpoint group '{text}' holds no passes")
    return Fixpoint(passes=inner, max_rounds=rounds)


def pass_names(passes: Iterable[Pass]) -> list[str]:
    """The names of the passes (fixpoint groups opened), in pipeline order."""
    names: list[str] = []
    for p in passes:
        names.extend(pass_names(p.passes) if isinstance(p, Fixpoint) else [p.name])
    return names


# -- context and instruments -----------------------------------------------------------------

class Executor(Protocol):
    """Runs one function over many items somewhere else (a Ray cluster: qc.tools.cluster), for a
    pass that must not import where: the CLI or ``qc.compile`` puts one in ``PassContext.executor``.
    ``shared`` goes to the workers once (not once per item); each worker process builds
    ``setup(shared)`` once and returns ``fn(state, item)`` per item. The results come back in
    the items' order; an item that keeps failing raises a QCError naming ``describe(index)``."""

    def map(self, setup: Callable[[Any], Any], fn: Callable[[Any, Any], Any], shared: Any,
            items: list[Any], *, describe: Callable[[int], str], desc: str = "") -> list[Any]: ...

    @property
    def workers(self) -> int: ...


@dataclass
class PassContext:
    """What a pass may read and record besides the module, loaded once per compile.

    Inputs: ``target`` (the loaded :class:`~qc.targets.Target`), ``calibration_data`` (model
    inputs, or an .npz path), ``calibration_cache`` (a statistics file to reuse or write),
    ``jobs`` (calibration worker processes), ``executor`` (an :class:`Executor`: calibration
    runs its shares of the samples there, e.g. on a Ray cluster), ``quiet`` (no progress bars). Results of passes:
    ``calibration`` (statistics from ``calibrate``), ``placement`` (from ``check-kernels``),
    ``legalized`` (``legalize``'s rewrites), ``outlier_splits`` and ``outlier_candidate_columns``
    (``split-outliers``), ``remarks``. ``cache`` is free for third-party passes."""

    target: Target | None = None
    calibration_data: CalibrationData | str | os.PathLike | None = None
    calibration_cache: str | os.PathLike | None = None
    jobs: int = 1
    executor: Executor | None = None
    quiet: bool = False
    calibration: CalibrationStats | None = None
    calibration_from_cache: str | None = None
    placement: Placement | None = None
    legalized: list[dict[str, Any]] | None = None
    outlier_splits: list[OutlierSplit] = field(default_factory=list)
    outlier_candidate_columns: int = 0
    remarks: list[str] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)
    passes_run: list[str] = field(default_factory=list)
    current_pass: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.target, str):  # a target name or .toml path: loaded here, once
            self.target = load_target(self.target)

    def require_target(self, pass_name: str, override: str = "") -> Target:
        """The target a pass works for: its own ``target`` option if given, else the compile's."""
        if override:
            return load_target(override)
        if self.target is None:
            raise QCError(f"{pass_name} needs a target", hint=f"{pass_name}{{target=x86-avx2}} or --target NAME")
        return self.target

    def remark(self, op: Op | None, message: str) -> None:
        where = ""
        if op:
            first = op.results[0] if op.results else None
            where = f"{op.qualified_type} '{op.name or (first.name if first else '?')}'"
        self.remarks.append(f"[{self.current_pass}] {where}: {message}" if where
                            else f"[{self.current_pass}] {message}")


class Instrument:
    """Hooks around every pass (TVM/MLIR instrumentation)."""

    def before_pass(self, p: Pass, module: Module, index: int) -> None: ...

    def after_pass(self, p: Pass, module: Module, index: int, changed: bool, seconds: float) -> None: ...

    def after_failure(self, p: Pass, module: Module, error: BaseException) -> None: ...

    def finish(self, module: Module) -> None: ...


def _dump(module: Module, title: str, stream: TextIO, elide_above: int | None) -> None:
    from qc.ir.printer import print_ir

    stream.write(f"// -----// IR Dump {title} //----- //\n")
    stream.write(print_ir(module, elide_above=elide_above))
    stream.flush()


@dataclass
class PrintIR(Instrument):
    """``--print-ir-before=NAMES`` / ``--print-ir-after=NAMES`` / ``--print-ir-after-all``."""

    before: frozenset[str] = frozenset()
    after: frozenset[str] = frozenset()
    after_all: bool = False
    after_failure_: bool = True
    stream: TextIO = sys.stderr
    elide_above: int | None = 16

    def before_pass(self, p: Pass, module: Module, index: int) -> None:
        if p.name in self.before:
            _dump(module, f"Before {p.spec()}", self.stream, self.elide_above)

    def after_pass(self, p: Pass, module: Module, index: int, changed: bool, seconds: float) -> None:
        if self.after_all or p.name in self.after:
            _dump(module, f"After {p.spec()}", self.stream, self.elide_above)

    def after_failure(self, p: Pass, module: Module, error: BaseException) -> None:
        if self.after_failure_ and (self.after_all or self.after):
            _dump(module, f"After Failure {p.spec()}", self.stream, self.elide_above)


@dataclass
class DumpIR(Instrument):
    """``--dump-ir-dir=DIR``: DIR/00-input.qir, DIR/01-<pass>.qir, ..., each a complete module.

    Tensors over ``elide_above`` elements go to one shared sidecar, DIR/weights.bin (each
    distinct tensor once), so every stage reloads: ``qc opt DIR/03-cse.qir -o m.onnx``.
    ``elide_above=None`` (``--full``) writes every tensor into the text instead."""

    directory: str
    elide_above: int | None = 16

    def __post_init__(self) -> None:
        from qc.ir.weights import SharedSidecar

        os.makedirs(self.directory, exist_ok=True)
        self._written_input = False
        self._sidecar = SharedSidecar(os.path.join(self.directory, "weights.bin"))

    def _write(self, module: Module, name: str, title: str) -> None:
        from qc.ir.fileio import atomic_write
        from qc.ir.printer import print_ir

        text = print_ir(module, elide_above=self.elide_above, header=title, sidecar=self._sidecar)
        if not self._sidecar.flush():
            text = text.replace(f'weights "{self._sidecar.reference}"\n', "", 1)
        with atomic_write(os.path.join(self.directory, name), "w") as f:
            f.write(text)

    def before_pass(self, p: Pass, module: Module, index: int) -> None:
        if not self._written_input:
            self._written_input = True
            self._write(module, "00-input.qir", "input")

    def after_pass(self, p: Pass, module: Module, index: int, changed: bool, seconds: float) -> None:
        self._write(module, f"{index + 1:02d}-{p.name}.qir", f"after {p.spec()}")

    def after_failure(self, p: Pass, module: Module, error: BaseException) -> None:
        self._sidecar.close()

    def finish(self, module: Module) -> None:
        self._sidecar.close()


@dataclass
class Timing(Instrument):
    """``--timing``: a table of wall time per pass, printed when the pipeline ends."""

    stream: TextIO = sys.stderr
    rows: list[tuple[str, float, bool]] = field(default_factory=list)

    def after_pass(self, p: Pass, module: Module, index: int, changed: bool, seconds: float) -> None:
        self.rows.append((p.spec(), seconds, changed))

    def add(self, label: str, seconds: float) -> None:
        self.rows.append((label, seconds, False))

    def finish(self, module: Module) -> None:
        total = sum(s for _, s, _ in self.rows) or 1e-12
        width = max([len(n) for n, _, _ in self.rows] + [4])
        self.stream.write(f"{'pass'.ljust(width)}  {'ms':>10}  {'%':>6}  changed\n")
        for name, seconds, changed in self.rows:
            self.stream.write(f"{name.ljust(width)}  {seconds * 1e3:10.2f}  {100 * seconds / total:6.1f}  "
                              f"{'yes' if changed else 'no'}\n")
        self.stream.write(f"{'total'.ljust(width)}  {total * 1e3:10.2f}  {100.0:6.1f}\n")
        self.stream.flush()


# -- the manager -----------------------------------------------------------------------------
class PassManager:
    """Runs passes in order, with instruments around each and the verifier after each."""

    def __init__(self, passes: Iterable[Pass] = (), *, instruments: Iterable[Instrument] = (),
                 verify_each: bool = True, ctx: PassContext | None = None):
        self.passes = list(passes)
        self.instruments = list(instruments)
        self.verify_each = verify_each
        self.ctx = ctx or PassContext()

    @classmethod
    def parse(cls, spec: str, **kwargs: Any) -> PassManager:
        """Build from a pipeline string (``''`` is the empty pipeline)."""
        spec = spec.strip()
        if spec in named_pipelines():
            spec = _NAMED_PIPELINES[spec][0]
        passes = [parse_pass(item) for item in split_top(spec)] if spec else []
        return cls(passes, **kwargs)

    def __str__(self) -> str:
        return ",".join(p.spec() for p in self.passes)

    def check_instruments(self) -> None:
        """``--print-ir-before/after=NAME`` must name a pass of this pipeline (else nothing would print)."""
        valid = pass_names(self.passes)
        for inst in self.instruments:
            if isinstance(inst, PrintIR):
                for flag, names in (("--print-ir-before", inst.before), ("--print-ir-after", inst.after)):
                    unknown = sorted(set(names) - set(valid))
                    if unknown:
                        raise QCError(f"{flag} names {', '.join(repr(n) for n in unknown)}, which "
                                      f"{'is' if len(unknown) == 1 else 'are'} in no pass of the pipeline",
                                      hint="passes in the pipeline: " + ", ".join(dict.fromkeys(valid)))

    def run(self, module: Module) -> Module:
        from qc.ir.verify import verify

        if self.verify_each:
            self._verify(module, None, verify)
        self._index = 0
        for p in self.passes:
            self._run_one(p, module, verify)
        for inst in self.instruments:
            inst.finish(module)
        return module

    def _run_one(self, p: Pass, module: Module, verify: Callable[[Module], None]) -> bool:
        if isinstance(p, Fixpoint):
            for _ in range(p.max_rounds):
                round_changed = [self._run_one(inner, module, verify) for inner in p.passes]
                if not any(round_changed):
                    return False
            return True
        ctx = self.ctx
        index = self._index
        self._index += 1
        for inst in self.instruments:
            inst.before_pass(p, module, index)
        ctx.current_pass = p.name
        start = time.perf_counter()
        try:
            changed = p.run(module, ctx)
        except Exception as e:
            for inst in self.instruments:
                inst.after_failure(p, module, e)
            raise self._failure(p, e) from (None if isinstance(e, QCError) else e)
        seconds = time.perf_counter() - start
        if not isinstance(changed, bool):
            raise PassError(f"pass '{p.name}' returned {type(changed).__name__}, expected bool (changed or not)")
        ctx.passes_run.append(p.spec())
        if self.verify_each:
            self._verify(module, p, verify)
        for inst in self.instruments:
            inst.after_pass(p, module, index, changed, seconds)
        return changed

    def _verify(self, module: Module, p: Pass | None, verify: Callable[[Module], None]) -> None:
        try:
            verify(module)
        except QCError as e:
            if p is None:
                raise
            raise PassError(f"the IR is invalid after pass '{p.spec()}': {e}",
                            hint=self._history()) from None

    def _history(self) -> str:
        ran = self.ctx.passes_run
        return "passes run before it: " + (", ".join(ran) if ran else "none")

    def _failure(self, p: Pass, e: Exception) -> PassError:
        ran = self.ctx.passes_run
        history = "after " + ", ".join(ran) if ran else "as the first pass"
        if isinstance(e, QCError):
            err = PassError(f"pass '{p.spec()}' ({history}): {e}")
        else:
            err = PassError(f"pass '{p.spec()}' ({history}) crashed: {type(e).__name__}: {e}",
                            hint="this is a bug in the pass; rerun with --debug for the traceback")
            err.internal = True
        return err
