"""The emitter's part for ``--threads``: task functions of split calls, the context they read, the
thread-pool entry points of model.h / model.c. Prints what ``split.plan`` decided; no decisions.

A split call ``fn(args)`` becomes, in run(), ``qc_parallel_for(qc_threads_tasks(T), PREFIX_taskI,
&qc_c)`` and, at file scope, a task function that takes the arena, weight and input / output
pointers from the context ``qc_c``, computes its units ``[qc_lo, qc_hi)`` with ``qc_split_range``
and calls ``fn`` with the count arguments replaced by the slice's and the pointers moved to it.
"""
from __future__ import annotations

from collections.abc import Callable

from .lowering import Buffer, Call, Ints, Lowered, Ptr

HEADER = "qc_threads.h"
SOURCES = ("qc_threads.c", "qc_threads.h")


def ctx_struct(low: Lowered, prefix: str) -> str:
    """The context every task function reads: arena, weights, model inputs and outputs."""
    fields = ["    unsigned char *qc_a;", "    const unsigned char *qc_w;"]
    fields += [f"    const {b.ctype} *{b.name};" for b in low.inputs]
    fields += [f"    {b.ctype} *{b.name};" for b in low.outputs]
    return f"struct {prefix}_qc_ctx {{\n" + "\n".join(fields) + "\n};\n"


def ctx_init(low: Lowered, prefix: str) -> list[str]:
    """run()'s statements that fill the context and start the pool on first use."""
    lines = [f"    struct {prefix}_qc_ctx qc_c;", "    qc_c.qc_a = qc_a;", "    qc_c.qc_w = qc_w;"]
    lines += [f"    qc_c.{b.name} = {b.name};" for b in low.inputs + low.outputs]
    lines.append(f"    if (!{prefix}_qc_started) {prefix}_set_threads(0);")
    return lines


def _roots(c: Call) -> list[Buffer]:
    seen: dict[int, Buffer] = {}
    for a in c.args:
        if isinstance(a, Ptr):
            seen.setdefault(id(a.buf.root), a.buf.root)
    return list(seen.values())


def task_function(c: Call, name: str, prefix: str, render_arg) -> str:
    """The static task function of split call *c* (render_arg: the emitter's argument printer)."""
    s = c.split
    lines = [f"/* {c.node.replace('*/', '* /')}: {c.kernel}, units [qc_lo, qc_hi) of {s.extent} "
             f"in granules of {s.granule} */",
             f"static void {name}(void *qc_ctx, int qc_task, int qc_ntasks)", "{",
             f"    const struct {prefix}_qc_ctx *qc_c = (const struct {prefix}_qc_ctx *)qc_ctx;"]
    kinds = {r.kind for r in _roots(c)}
    if "arena" in kinds:
        lines.append("    unsigned char *qc_a = qc_c->qc_a;")
    if "weight" in kinds:
        lines.append("    const unsigned char *qc_w = qc_c->qc_w;")
    for r in _roots(c):
        if r.kind in ("input", "output"):
            q = "const " if r.kind == "input" else ""
            lines.append(f"    {q}{r.ctype} *{r.name} = qc_c->{r.name};")
    lines += ["    int qc_lo, qc_hi;",
              f"    qc_split_range({s.extent}, {s.granule}, qc_task, qc_ntasks, &qc_lo, &qc_hi);"]
    args = []
    for i, a in enumerate(c.args):
        text = render_arg(a)
        if i in s.counts:
            f = s.counts[i]
            text = "(qc_hi - qc_lo)" + (f" * {f}" if f != 1 else "")
        elif s.offsets.get(i) and isinstance(a, (Ptr, Ints)):
            text = f"({text} + (ptrdiff_t)qc_lo * {s.offsets[i]})"
        args.append(text)
    call = c.text.format(*args) if c.text else f"{c.fn}({', '.join(args)});"
    lines += [f"    {call}", "}", ""]
    return "\n".join(lines)


class TaskWriter:
    """Collects the task functions of a model's split calls, numbered in schedule order."""

    def __init__(self, prefix: str, render_arg: Callable[[object], str]) -> None:
        self.prefix = prefix
        self.render_arg = render_arg
        self.functions: list[str] = []

    def dispatch(self, c: Call) -> str:
        """The statement in run() that runs split call *c* on the pool (its task function is kept)."""
        name = f"{self.prefix}_task{len(self.functions)}"
        self.functions.append(task_function(c, name, self.prefix, self.render_arg))
        return f"qc_parallel_for(qc_threads_tasks({c.split.max_tasks}), {name}, &qc_c);"


def api_h(prefix: str, threads: int) -> list[str]:
    """model.h's declarations of the pool's entry points."""
    P = prefix.upper()
    return [f"#define {P}_THREADS_DEFAULT {threads}  /* qc compile --threads */", "",
            "/* Start the worker pool with n threads (n < 1: the QC_THREADS environment variable if set, else",
            f"   {P}_THREADS_DEFAULT); {prefix}_run calls it with 0 on first use. Returns the threads running.",
            "   The results do not depend on the thread count. */",
            f"int {prefix}_set_threads(int n);",
            "/* Stop and join the workers (the next run starts them again). */",
            f"void {prefix}_threads_shutdown(void);"]


def api_c(prefix: str) -> str:
    """model.c's definitions of the pool's entry points."""
    P = prefix.upper()
    return "\n".join([f"static int {prefix}_qc_started;", "",
                      f"int {prefix}_set_threads(int n)", "{",
                      f"    {prefix}_qc_started = 1;",
                      f"    return qc_threads_init(n >= 1 ? n : qc_threads_env({P}_THREADS_DEFAULT));", "}", "",
                      f"void {prefix}_threads_shutdown(void)", "{",
                      f"    {prefix}_qc_started = 0;", "    qc_threads_shutdown();", "}", ""])
