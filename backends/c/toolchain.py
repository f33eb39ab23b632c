"""Find, drive and run the C toolchains of the C backend: host, aarch64 (qemu-aarch64) and
Cortex-M (qemu-system-arm with semihosting).

    tools = find_tools("cortex-m")
    exe = build([src], out, "cortex-m", "cortex-m55")
    proc = run(exe, "cortex-m", "cortex-m55", [str(infile), str(outfile)], timeout=60)

Cortex-M programs get a startup (runtime/cortex_m/startup.c: own stack, CP10/CP11 enabled,
argv from semihosting, faults exit with 0xF0 | fault) and a linker script per QEMU machine (plus,
for the C decode runtime's firmware on mps3-an547, the board's own memories: weights in flash);
newlib + rdimon give them fopen/fread/fwrite/printf on host files and the exit code. Paths
passed to Cortex-M programs must be absolute and contain no spaces.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qc.errors import QCError

RUNTIME = Path(__file__).resolve().parent / "runtime"
CORTEX_M = RUNTIME / "cortex_m"
KINDS = ("host", "aarch64", "cortex-m")
WARNINGS = ("-std=c99", "-Wall", "-Wextra", "-Werror")
# FP contraction stays off (and is said so, whatever the -std): the kernels write their fused
# multiply-adds out (vfmaq / fmaf) where the reference allows them, so every target and the host
# compute the same bits; code that must match an unfused reference (RoPE) would otherwise be
# fused on aarch64 and not on x86 (docs/c-kernels.md, "FP contraction").
FP_FLAGS = ("-ffp-contract=off",)

# qemu-aarch64 -cpu model -> compiler flags that use every feature the model has.
AARCH64_CPUS = {
    "cortex-a53": ["-mcpu=cortex-a53"],
    "cortex-a76": ["-mcpu=cortex-a76"],
    "max": ["-march=armv8.6-a+dotprod+fp16+i8mm"],
    "generic": ["-march=armv8-a"],
}


@dataclass(frozen=True)
class MachineM:
    """A Cortex-M core and the qemu-system-arm machine that runs it."""

    cpu: str
    machine: str
    flags: tuple[str, ...]
    linker_script: str
    flash_script: str | None = None
    """The board's own memories (code, constants in flash, data in SRAM), for the C decode
    runtime's firmware; None: it links with linker_script too."""

    def script(self, firmware: bool = False) -> str:
        """The linker script of a harness (``firmware``: the C decode runtime's)."""
        return (self.flash_script or self.linker_script) if firmware else self.linker_script

    @property
    def ram_bytes(self) -> int:
        """The RAM region of the linker script: weights, data, the arena and the stack share it."""
        return region_bytes(self.linker_script)["RAM"]


def region_bytes(linker_script: str) -> dict[str, int]:
    """{region name: LENGTH in bytes} of a linker script's MEMORY block (runtime/cortex_m)."""
    import re

    text = (CORTEX_M / linker_script).read_text()
    units = {"": 0, "K": 10, "M": 20}
    return {m.group(1): int(m.group(2)) << units[m.group(3)]
            for m in re.finditer(r"^\s*(\w+)\s*\(\w+\)\s*:.*LENGTH\s*=\s*(\d+)\s*([KM]?)", text, re.M)}


CORTEX_M_CPUS = {
    "cortex-m4": MachineM("cortex-m4", "mps2-an386",
                          ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
                          "mps2-an386.ld"),
    "cortex-m55": MachineM("cortex-m55", "mps3-an547",
                           ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"),
                           "mps3-an547.ld", "mps3-an547-flash.ld"),
}
_BY_MACHINE = {m.machine: m for m in CORTEX_M_CPUS.values()}


@dataclass(frozen=True)
class Tools:
    """Resolved executables for one kind: compiler, emulator (None for host) and extras."""

    kind: str
    cc: str
    emulator: str | None


def _which(names: Sequence[str]) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def _has_lib(cc: str, *args: str) -> bool:
    """Whether *cc* finds the C library file (the last of *args*) in its sysroot."""
    try:
        out = subprocess.run([cc, *args[:-1], f"-print-file-name={args[-1]}"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and os.path.isabs(out.stdout.strip())


def find_tools(kind: str) -> Tools | None:
    """The compiler and emulator for *kind* ("host", "aarch64", "cortex-m"), or None if missing."""
    if kind == "host":
        cc = _which([os.environ.get("CC", ""), "gcc", "clang", "cc"] if os.environ.get("CC")
                    else ["gcc", "clang", "cc"])
        return Tools(kind, cc, None) if cc else None
    if kind == "aarch64":
        cc, emu = _which(["aarch64-linux-gnu-gcc"]), _which(["qemu-aarch64"])
        return Tools(kind, cc, emu) if cc and emu and _has_lib(cc, "libc.a") else None
    if kind == "cortex-m":
        cc, emu = _which(["arm-none-eabi-gcc"]), _which(["qemu-system-arm"])
        if cc and emu and _has_lib(cc, "--specs=rdimon.specs", "librdimon.a"):
            return Tools(kind, cc, emu)
        return None
    raise QCError(f"unknown toolchain kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")


def missing_reason(kind: str) -> str:
    """Which tools *kind* needs, for skip and error messages."""
    need = {"host": "a host C compiler (gcc or clang)",
            "aarch64": "aarch64-linux-gnu-gcc with libc6-dev-arm64-cross and qemu-aarch64",
            "cortex-m": "arm-none-eabi-gcc with newlib (rdimon) and qemu-system-arm"}[kind]
    return f"{kind} toolchain not found: needs {need}"


def require_tools(kind: str) -> Tools:
    """For pytest: the tools for *kind*; skips when missing, fails instead when QC_REQUIRE_ARM=1."""
    import pytest

    tools = find_tools(kind)
    if tools is None:
        reason = missing_reason(kind)
        if os.environ.get("QC_REQUIRE_ARM") == "1":
            pytest.fail(f"{reason} (QC_REQUIRE_ARM=1)")
        pytest.skip(reason)
    return tools


def machine_for(cpu: str) -> MachineM:
    """The Cortex-M setup for a core name ("cortex-m4") or a machine name ("mps2-an386")."""
    m = CORTEX_M_CPUS.get(cpu) or _BY_MACHINE.get(cpu)
    if m is None:
        raise QCError(f"unknown Cortex-M cpu or machine {cpu!r}",
                      hint=f"use one of {', '.join([*CORTEX_M_CPUS, *_BY_MACHINE])}")
    return m


def cpu_flags(kind: str, cpu: str | None) -> list[str]:
    """Compiler flags for *cpu* (a qemu -cpu model for aarch64, a core or machine for cortex-m)."""
    if kind == "cortex-m":
        return list(machine_for(cpu or "").flags)
    if kind == "aarch64" and cpu:
        if cpu not in AARCH64_CPUS:
            raise QCError(f"unknown aarch64 cpu {cpu!r}", hint=f"use one of {', '.join(AARCH64_CPUS)}")
        return list(AARCH64_CPUS[cpu])
    return []


def _tools_or_error(kind: str) -> Tools:
    tools = find_tools(kind)
    if tools is None:
        raise QCError(missing_reason(kind), hint="install them (see .ci/run)")
    return tools


def build(sources: Sequence[Path], out: Path, kind: str, cpu: str | None = None,
          extra_flags: Sequence[str] = (), include_dirs: Sequence[Path] = (), *, firmware: bool = False) -> Path:
    """Compile and link *sources* into the executable *out* (C99, -Wall -Wextra -Werror, -O2,
    FP contraction off: the kernels' fused multiply-adds are explicit).

    *cpu* selects the instruction set (see cpu_flags); flags in *extra_flags* come last, so a
    target's own -mcpu/-march wins. runtime/ is always on the include path. *firmware*: a
    Cortex-M program links with its machine's device layout (``MachineM.script``). Raises
    QCError with the compiler's output on failure.
    """
    tools = _tools_or_error(kind)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [tools.cc, *WARNINGS, *FP_FLAGS, "-O2", *cpu_flags(kind, cpu)]
    srcs = [str(s) for s in sources]
    if kind == "aarch64":
        cmd.append("-static")
    if kind == "cortex-m":
        m = machine_for(cpu or "")
        cmd += ["-ffunction-sections", "-fdata-sections", "--specs=nano.specs",
                "--specs=rdimon.specs", "-nostartfiles", "-Wl,--gc-sections",
                "-Wl,--no-warn-rwx-segments", "-T", str(CORTEX_M / m.script(firmware))]
        srcs.append(str(CORTEX_M / "startup.c"))
    cmd += [*extra_flags, f"-I{RUNTIME}", *[f"-I{d}" for d in include_dirs], *srcs, "-o", str(out)]
    cmd.append("-lm")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise QCError(f"C compilation failed ({kind}, cpu {cpu}):\n{' '.join(cmd)}\n{proc.stderr}",
                      where=str(sources[0]) if sources else None)
    return out


_UNALLOCATED = (".debug", ".comment", ".ARM.attributes", ".stab")


def section_bytes(binary: Path) -> dict[str, int]:
    """{section: bytes} of a Cortex-M ELF's allocated sections (.text, .rodata, .data, .bss, ...),
    from arm-none-eabi-size -A: what the program puts in the linker script's regions."""
    tools = _tools_or_error("cortex-m")
    size = str(Path(tools.cc).with_name(Path(tools.cc).name.replace("gcc", "size")))
    proc = subprocess.run([size, "-A", "-d", str(binary)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise QCError(f"{size} failed: {proc.stderr.strip()}", where=str(binary))
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if (len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit() and int(parts[1]) > 0
                and not parts[0].startswith(_UNALLOCATED)):
            out[parts[0]] = int(parts[1])
    return out


def run_command(binary: Path, kind: str, cpu: str | None, args: Sequence[str] = ()) -> list[str]:
    """The command line that runs *binary* for *kind* (see run)."""
    tools = _tools_or_error(kind)
    binary = Path(binary).resolve()
    if kind == "host":
        return [str(binary), *args]
    if kind == "aarch64":
        return [tools.emulator or "qemu-aarch64", "-cpu", cpu or "max", str(binary), *args]
    m = machine_for(cpu or "")
    for a in args:
        if " " in a or not a.isprintable():
            raise QCError(f"argument {a!r} contains a space or an unprintable character",
                          hint="Cortex-M programs get their command line through semihosting, "
                               "split on spaces; use paths without spaces")
    config = ",".join(["enable=on", "target=native",
                       *(f"arg={a.replace(',', ',,')}" for a in [binary.name, *args])])
    return [tools.emulator or "qemu-system-arm", "-M", m.machine, "-nographic", "-monitor", "none",
            "-serial", "none", "-semihosting-config", config, "-kernel", str(binary)]


def run(binary: Path, kind: str, cpu: str | None = None, args: Sequence[str] = (),
        timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run *binary*: natively (host), under qemu-aarch64 -cpu *cpu*, or under qemu-system-arm on
    the machine for *cpu* with semihosting. Returns the CompletedProcess (text stdout/stderr);
    a Cortex-M fault exits with 0xF0 | fault number. Raises subprocess.TimeoutExpired after
    *timeout* seconds (the emulator is killed)."""
    cmd = run_command(binary, kind, cpu, args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
