"""The C decode runtime's driver: the step harness (``decode_harness.c``) and ``CStepper``.

A KV-cache decoder compiled for C (``c_decode_pipeline``, then ``emit_c``) has
``model_run(input_ids, position_ids, logits, arena, kv_cache, past_len)``: one step of
``MODEL_STEP_TOKENS`` tokens appended to the ``past_len`` tokens in ``kv_cache``. The harness
serves steps over stdin / stdout (little-endian, binary), so one process keeps its cache across
requests:

    request   int32 n, int32 flags, then n int64 token ids   (n > 0: append the tokens;
                                                             n = -1: empty the cache; n = 0: exit)
    response  int32 status, int32 rows, then rows x vocab float32 logits
              (status 0; 1: the cache would pass MODEL_MAX_CONTEXT, nothing computed;
              rows: n with flags bit 0, else 1: the last token's)

Whole chunks of a step's tokens go through ``prefill_run`` (flags bit 0: every row's logits) or
``prefill_last_run`` (the chunk's last row's only, last_rows.py); the rest one by one through
``model_run``. Positions are the cache slots (past_len + i): batch 1, no padding. ``CStepper`` runs the harness
natively or under the target's qemu and implements qc.tools.generate's Stepper protocol.

A Cortex-M target has no stdin: its harness is the firmware ``harness N ID...`` (greedy
generation, the ids printed over semihosting), linked with ``mps3-an547-flash.ld`` (weights in
flash, the arena and the cache in SRAM .bss); ``firmware_generate`` / ``firmware_argmax`` run it
under qemu-system-arm.
"""
from __future__ import annotations

import os
import platform
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qc.errors import QCError
from qc.passes.fuse_cached_attention import ROLE_PREFIX

from .emit import PROFILE_HOOK
from .lowering import Lowered


def decode_roles(metadata: Sequence[tuple[str, str]]) -> dict[str, str]:
    """{"input_ids": name, "position_ids": name (if any), "logits": name} from fuse-cached-attention's metadata."""
    return {k[len(ROLE_PREFIX):]: v for k, v in metadata if k.startswith(ROLE_PREFIX)}


def decode_harness_c(low: Lowered, prefix: str, roles: dict[str, str], chunk: Lowered | None = None,
                     last: Lowered | None = None, *, firmware: bool = False) -> str:
    """harness.c: the step server above, for the lowered decoder *low* (one token per step) and,
    with *chunk*, ``prefill_run`` for whole chunks of ``chunk.step_tokens`` tokens (every row's
    logits: flags bit 0) and, with *last*, ``prefill_last_run`` for the chunks of a step that wants
    the last token's logits only (backends/c/last_rows.py). *firmware* (Cortex-M: no stdin) writes,
    instead of the server, a main that works from its command line: ``harness N ID...`` prefills
    the ids and prints N greedy tokens (the server's ``--bench``), ``harness --argmax ID...`` the
    argmax after each id."""
    P = prefix.upper()
    main = (_FIRMWARE_MAIN if firmware else _SERVER_MAIN).replace("{P}", P)
    if low.step_tokens != 1:
        raise QCError(f"the step harness needs a one-token step (this model takes {low.step_tokens})")
    args = []
    for name in low.input_names:
        if name == roles.get("input_ids"):
            args.append("ids")
        elif name == roles.get("position_ids"):
            args.append("pos")
        else:
            raise QCError(f"decoder input '{name}' is neither the token ids nor the positions",
                          hint="the C decode runtime feeds input_ids and position_ids only; bind other inputs "
                               "with --bind NAME=VALUE")
    if low.output_names != [roles.get("logits")]:
        raise QCError(f"the decoder's outputs are {low.output_names}; the C decode runtime returns the logits only")
    vocab = low.outputs[0].size
    step = f"{prefix}_run({', '.join(args + ['logits', 'arena', 'kv_cache', 'past'])})"
    C = chunk.step_tokens if chunk is not None else 1
    if chunk is not None:
        for p in (chunk, last):
            if p is not None and p.input_names != low.input_names:
                raise QCError("the prefill program's inputs differ from the decode step's")
        chunk_args = ", ".join(a + "s" for a in args)
        call = f"prefill_run({chunk_args}, chunk_logits, arena, kv_cache, past)"
        arena = f"(PREFILL_ARENA_BYTES > {P}_ARENA_BYTES ? PREFILL_ARENA_BYTES : {P}_ARENA_BYTES)"
        if last is not None:
            arena = f"(PREFILL_LAST_ARENA_BYTES > {arena} ? PREFILL_LAST_ARENA_BYTES : {arena})"
            rows = f"""            if (all) {{
                {call};
                for (t = 0; t < CHUNK; ++t) {{
                    if (emit && !emit(chunk_logits + (size_t)t * VOCAB)) return 0;
                }}
                memcpy(logits, chunk_logits + (size_t)(CHUNK - 1) * VOCAB, sizeof(float) * VOCAB);
            }} else {{   /* the last row's logits only, and none before the last chunk */
                prefill_last_run({chunk_args}, i + CHUNK == n ? logits : NULL, arena, kv_cache, past);
                if (emit && i + CHUNK == n && !emit(logits)) return 0;
            }}
"""
        else:
            rows = f"""            {call};
            for (t = 0; t < CHUNK; ++t) {{
                if (emit && (all || i + t == n - 1) && !emit(chunk_logits + (size_t)t * VOCAB)) return 0;
            }}
            memcpy(logits, chunk_logits + (size_t)(CHUNK - 1) * VOCAB, sizeof(float) * VOCAB);
"""
        chunk_decl = ('#include "prefill.h"\n' + ('#include "prefill_last.h"\n' if last is not None else "")
                      + f"#define CHUNK {C}\n#define ARENA_BYTES {arena}\n"
                      "static int64_t idss[CHUNK], poss[CHUNK] = {0};\n"
                      "static float chunk_logits[PREFILL_OUTPUT0_ELEMS];\n")
        chunk_run = f"""        if (n - i >= CHUNK) {{   /* a whole chunk: one prefill_run (or prefill_last_run) */
            for (t = 0; t < CHUNK; ++t) {{
                idss[t] = tokens[i + t];
                poss[t] = past + t;
            }}
{rows}            (void)poss;
            i += CHUNK;
            past += CHUNK;
            continue;
        }}
"""
    else:
        chunk_decl = f"#define ARENA_BYTES {P}_ARENA_BYTES\n"
        chunk_run = ""
    what = "Cortex-M firmware (greedy generation)" if firmware else "step server"
    return f"""/* Generated by qc (C backend): the decode runtime's {what} (backends/c/decode.py). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "{prefix}.h"
{chunk_decl}
#define VOCAB {vocab}u

static uint64_t arena[(ARENA_BYTES + 7u) / 8u + 2u];
static float kv_cache[({P}_KV_CACHE_BYTES + 3u) / 4u + 4u];
static float logits[{P}_OUTPUT0_ELEMS];
static int64_t ids[1], pos[1] = {{0}};

{PROFILE_HOOK}
#define mark(label) QC_PROF(label)  /* benchmarks/arm/insn_count.c's marker, with -DQC_PROFILE */

static long argmax(const float *row)
{{
    long best = 0, i;
    for (i = 1; i < (long)VOCAB; ++i) best = row[i] > row[best] ? i : best;
    return best;
}}

/* Append tokens[0..n) after the past tokens in the cache ({C} per prefill_run while a whole
 * chunk is left, then one per {prefix}_run); hands emit (unless NULL) the logits of every token
 * (all) or of the last; 0 when emit fails */
static int run_tokens(const int64_t *tokens, long n, long past, int (*emit)(const float *row), int all)
{{
    long i = 0, t;
    (void)t;
    while (i < n) {{
{chunk_run}        ids[0] = tokens[i];
        pos[0] = past;
        (void)pos;
        {step};
        if (emit && (all || i == n - 1) && !emit(logits)) return 0;
        ++i;
        ++past;
    }}
    return 1;
}}

/* Prefill the prompt ids between marks 1 and 2, then decode n tokens greedily (argmax), marking
 * after each (3 ..), as benchmarks/arm/llama_driver.c does; prints the ids, comma-separated */
static int greedy(long n, char **text, long count)
{{
    static int64_t prompt[{P}_MAX_CONTEXT];
    long past = count, i, k, best;
    if (count < 1 || n < 0 || past + n > (long){P}_MAX_CONTEXT) return 2;
    for (i = 0; i < count; ++i) prompt[i] = atol(text[i]);
    mark(1u);
    run_tokens(prompt, past, 0, NULL, 0);
    mark(2u);
    for (k = 0; k < n; ++k, ++past) {{
        best = argmax(logits);
        printf("%ld%s", best, k + 1 < n ? "," : "\\n");
        prompt[0] = best;
        run_tokens(prompt, 1, past, NULL, 0);
        mark((unsigned long)(3 + k));
    }}
    return fflush(stdout) == 0 ? 0 : 4;
}}

{main}"""


_SERVER_MAIN = """static int put(const void *data, size_t size, size_t count)
{
    return fwrite(data, size, count, stdout) == count;
}

static int put_row(const float *row)
{
    return put(row, sizeof *row, VOCAB);
}

int main(int argc, char **argv)
{
    int32_t head[2];
    long past = 0;
    if (argc > 3 && strcmp(argv[1], "--bench") == 0) return greedy(atol(argv[2]), argv + 3, argc - 3);
    if (argc > 1) {
        fprintf(stderr, "usage: %s  (steps over stdin/stdout)  |  %s --bench N ID...\\n", argv[0], argv[0]);
        return 2;
    }
    while (fread(head, sizeof head[0], 2, stdin) == 2) {
        int32_t n = head[0], all = head[1] & 1, reply[2];
        int64_t *tokens;
        if (n == 0) break;
        if (n < 0) {
            past = 0;
            continue;
        }
        tokens = (int64_t *)malloc((size_t)n * sizeof *tokens);
        if (tokens == NULL || fread(tokens, sizeof *tokens, (size_t)n, stdin) != (size_t)n) return 3;
        reply[0] = past + n > (long){P}_MAX_CONTEXT;
        reply[1] = reply[0] ? 0 : (all ? n : 1);
        if (!put(reply, sizeof reply[0], 2)) return 4;
        if (!reply[0]) {
            if (!run_tokens(tokens, n, past, put_row, all)) return 4;
            past += n;
        }
        free(tokens);
        fflush(stdout);
    }
    return 0;
}
"""
"""The step server's main (hosts and Cortex-A: stdin / stdout; ``{P}`` is the prefix in capitals)."""

_FIRMWARE_MAIN = """static long printed;

static int print_argmax(const float *row)
{
    return printf("%s%ld", printed++ ? "," : "", argmax(row)) > 0;
}

/* The Cortex-M firmware (its command line from semihosting):
 *   harness N ID...          prefill the ids, then print N greedy (argmax) tokens
 *   harness --argmax ID...   feed the ids as given (teacher-forced), print the argmax after each
 * exit code 0; 2 on bad arguments or when the ids and N pass {P}_MAX_CONTEXT */
int main(int argc, char **argv)
{
    static int64_t tokens[{P}_MAX_CONTEXT];
    long n = argc - 2, i;
    if (argc > 2 && strcmp(argv[1], "--argmax") == 0) {
        if (n > (long){P}_MAX_CONTEXT) return 2;
        for (i = 0; i < n; ++i) tokens[i] = atol(argv[2 + i]);
        run_tokens(tokens, n, 0, print_argmax, 1);
        printf("\\n");
        return fflush(stdout) == 0 ? 0 : 4;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: %s N ID...  |  %s --argmax ID...\\n", argv[0], argv[0]);
        return 2;
    }
    return greedy(atol(argv[1]), argv + 2, argc - 2);
}
"""
"""The bare-metal main (no stdin to serve steps on): greedy generation from the command line."""


def firmware_generate(binary: str | os.PathLike, cpu: str, prompt: Sequence[int], new_tokens: int, *,
                      timeout: float = 120.0) -> list[int]:
    """Run a Cortex-M decode firmware (built by runner.build_model) under qemu-system-arm on
    *cpu*'s machine: ``harness N ID...``, the *new_tokens* greedy token ids after *prompt*."""
    return _firmware_ids(binary, cpu, [str(int(new_tokens)), *(str(int(t)) for t in prompt)], timeout)


def firmware_argmax(binary: str | os.PathLike, cpu: str, ids: Sequence[int], *, timeout: float = 120.0) -> list[int]:
    """``harness --argmax ID...``: the argmax of the logits after each of *ids* (teacher-forced)."""
    return _firmware_ids(binary, cpu, ["--argmax", *(str(int(t)) for t in ids)], timeout)


def _firmware_ids(binary: str | os.PathLike, cpu: str, args: list[str], timeout: float) -> list[int]:
    from . import toolchain

    done = toolchain.run(Path(binary), "cortex-m", cpu, args, timeout=timeout)
    if done.returncode != 0:
        raise QCError(f"the C decoder firmware exited with {done.returncode}: {(done.stderr or done.stdout)[-2000:]}",
                      where=str(binary))
    lines = done.stdout.strip().splitlines()
    return [int(t) for t in lines[-1].split(",")] if lines else []


def open_stepper(out_dir: str, *, build: bool = True) -> CStepper:
    """A CStepper on the C output directory *out_dir* of a KV-cache decoder (``qc compile ...
    --emit c --emit-harness``): its harness built with its Makefile (``make harness``) and run
    natively when the target's compiler makes host code, else under the target's qemu."""
    from .runner import load_report

    path = os.path.join(out_dir, "report.json")
    if not os.path.isfile(path):
        raise QCError("not a C output directory (no report.json)", where=out_dir,
                      hint="compile the model with qc compile ... --emit c --emit-harness -o DIR")
    report = load_report(out_dir)
    decode = report.get("decode")
    if decode is None:
        raise QCError("this C output is a fixed-shape forward pass, not the decode runtime", where=out_dir,
                      hint="compile a KV-cache decoder (qc models build ... --kv-cache) with --emit c and no --shape")
    if not os.path.isfile(os.path.join(out_dir, "harness.c")):
        raise QCError("the C output has no step harness", where=out_dir, hint="compile it again with --emit-harness")
    cc = str(report.get("cc") or _makefile_cc(out_dir))
    if "none-eabi" in cc:
        raise QCError("qc generate runs the C decode runtime of Cortex-A and host targets; a Cortex-M build's "
                      "harness is a firmware that generates greedily from its command line", where=out_dir,
                      hint="run it under qemu-system-arm: harness N ID... (docs/c-backend.md, 'On a Cortex-M')")
    if build:
        done = subprocess.run(["make", "-s", "-C", out_dir, "harness"], capture_output=True, text=True)
        if done.returncode != 0:
            raise QCError(f"make harness failed: {done.stderr.strip()[-2000:]}", where=out_dir)
    runner: list[str] = []
    env: dict[str, str] = {}
    if "aarch64" in cc and platform.machine() not in ("aarch64", "arm64"):
        runner = list(report.get("qemu") or ["qemu-aarch64"])
        env["QEMU_LD_PREFIX"] = "/usr/aarch64-linux-gnu"
    return CStepper(os.path.join(out_dir, "harness"), runner=runner, report=decode, env=env)


def _makefile_cc(out_dir: str) -> str:
    try:
        with open(os.path.join(out_dir, "Makefile")) as f:
            return next((line.split("=", 1)[1].strip() for line in f if line.startswith("CC =")), "cc")
    except OSError:
        return "cc"


class CStepper:
    """qc.tools.generate's Stepper over a running step harness (a C output directory's
    ``decode_harness``, natively or under *runner*, e.g. ``["qemu-aarch64", "-cpu", "cortex-a76",
    "-L", "/usr/aarch64-linux-gnu"]``)."""

    def __init__(self, binary: str, *, runner: Sequence[str] = (), report: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None):
        self.binary = binary
        self.report = report or {}
        try:
            self._proc = subprocess.Popen([*runner, binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          env={**os.environ, **(env or {})})
        except OSError as e:
            raise QCError(f"cannot run the C decoder: {e.strerror}", where=binary,
                          hint="a harness built for another CPU runs under its qemu (see report.json 'qemu')") from None
        self._length = 0
        self.vocab = int(self.report.get("vocab", 0))
        self.max_context = int(self.report.get("max_context", 0))
        self.cache_floats = int(self.report.get("kv_cache_bytes", 0)) // 4

    def reset(self) -> None:
        self._send(struct.pack("<ii", -1, 0))
        self._length = 0

    @property
    def cache_length(self) -> int:
        return self._length

    @property
    def cache_bytes(self) -> int:
        """Bytes of cache in use (the harness holds MODEL_KV_CACHE_BYTES for max_context tokens)."""
        if not self.max_context:
            return 0
        return int(self.report.get("kv_cache_bytes", 0)) * self._length // self.max_context

    def step(self, token_ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        ids = np.asarray(list(token_ids), dtype="<i8")
        if ids.size == 0:
            raise QCError("a step needs at least one token")
        self._send(struct.pack("<ii", int(ids.size), int(all_logits)) + ids.tobytes())
        status, rows = struct.unpack("<ii", self._read(8))
        if status:
            raise QCError(f"the C decoder's cache holds {self.max_context} tokens: {self._length} + {ids.size} "
                          "do not fit", hint="compile with a larger --max-context")
        data = self._read(rows * self.vocab * 4)
        self._length += int(ids.size)
        return np.frombuffer(data, dtype="<f4").reshape(rows, self.vocab).copy()

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._send(struct.pack("<ii", 0, 0))
                self._proc.stdin.close()  # type: ignore[union-attr]
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()

    def __enter__(self) -> CStepper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise QCError(f"the C decoder {self.binary} stopped (exit {self._proc.wait()})") from None

    def _read(self, n: int) -> bytes:
        assert self._proc.stdout is not None
        data = self._proc.stdout.read(n)
        if data is None or len(data) != n:
            raise QCError(f"the C decoder {self.binary} stopped (exit {self._proc.wait()}) mid-reply")
        return data
