"""onnxruntime's own linux-arm64 build under qemu-aarch64 (for benchmarks/arm_speed.py).

- ``fetch()``: the npm package onnxruntime-node (its ``bin/napi-v6/linux/arm64/libonnxruntime.so.1``)
  into ~/.cache/qc/arm/ (the only network access; ``--fetch`` or fetch-if-missing).
- ``prefix()``: a directory for ``qemu-aarch64 -L``: the aarch64 libraries and a fake Cortex-A76
  ``/proc/cpuinfo`` and ``/sys/devices/system/cpu/{possible,present,online}`` (onnxruntime's
  cpuinfo reads them; under qemu-user it would see the x86 host's and crash; qemu consults -L for
  absolute paths the guest opens).
- ``build_harness()``: ort_run.c cross-compiled (dlopens the library, the OrtApi slots by index).
- ``argv(model, feeds, outputs, runs)``: the qemu arguments and command line of one ort_run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

ORT_VERSION = "1.30.0"
NPM_URL = f"https://registry.npmjs.org/onnxruntime-node/-/onnxruntime-node-{ORT_VERSION}.tgz"
LIB_IN_TGZ = "package/bin/napi-v6/linux/arm64/libonnxruntime.so.1"
CACHE = Path(os.environ.get("QC_ARM_CACHE", Path.home() / ".cache" / "qc" / "arm"))
HERE = Path(__file__).resolve().parent
SYSROOT_LIB = Path("/usr/aarch64-linux-gnu/lib")
# ONNX TensorProto element types <-> numpy
ONNX_TYPES = {np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3, np.dtype(np.int32): 6,
              np.dtype(np.int64): 7, np.dtype(np.bool_): 9, np.dtype(np.float16): 10}
CPUINFO_A76 = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 50.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
    "dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\n"
    "CPU revision\t: 1\n\n" for i in range(1))


def lib_path() -> Path:
    return CACHE / f"onnxruntime-{ORT_VERSION}-linux-arm64" / "libonnxruntime.so.1"


def fetch(verbose: bool = True) -> Path:
    """Download onnxruntime-node's tarball from the npm registry (once) and extract the arm64 library."""
    lib = lib_path()
    if lib.exists():
        return lib
    CACHE.mkdir(parents=True, exist_ok=True)
    tgz = CACHE / f"onnxruntime-node-{ORT_VERSION}.tgz"
    if not tgz.exists():
        if verbose:
            print(f"fetching {NPM_URL} (~110 MB) into {CACHE}", flush=True)
        tmp = tgz.with_name(f"{tgz.name}.{os.getpid()}.part")
        with urllib.request.urlopen(NPM_URL, timeout=600) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        os.replace(tmp, tgz)
    with tarfile.open(tgz) as t:
        member = t.getmember(LIB_IN_TGZ)
        src = t.extractfile(member)
        assert src is not None
        lib.parent.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_name(f"{lib.name}.{os.getpid()}.part")
        tmp.write_bytes(src.read())
        os.replace(tmp, lib)
    return lib


def available() -> bool:
    return lib_path().exists()


def prefix() -> Path:
    """The qemu -L directory (rebuilt when missing): lib -> the aarch64 sysroot's libraries, the
    fake /proc/cpuinfo and /sys/devices/system/cpu/*."""
    root = CACHE / "prefix-a76"
    info = root / "proc" / "cpuinfo"
    if not info.exists() or info.read_text() != CPUINFO_A76:
        for d in ("lib", "usr/lib"):
            link = root / d
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                try:
                    link.symlink_to(SYSROOT_LIB)
                except FileExistsError:   # another process made it just now
                    pass
        cpu = root / "sys" / "devices" / "system" / "cpu"
        cpu.mkdir(parents=True, exist_ok=True)
        for name in ("possible", "present", "online"):
            (cpu / name).write_text("0\n")
        info.parent.mkdir(parents=True, exist_ok=True)
        info.write_text(CPUINFO_A76)
    return root


def build_harness(out: Path | None = None) -> Path:
    """Cross-compile ort_run.c (dynamic, for dlopen) into benchmarks/arm/build/ort_run."""
    src = HERE / "ort_run.c"
    out = Path(out or HERE / "build" / "ort_run")
    if not (out.exists() and out.stat().st_mtime >= src.stat().st_mtime):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")   # renamed into place: parallel tests
        try:
            subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror",
                            str(src), "-ldl", "-o", str(tmp)], check=True)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return out


def argv(model: Path, feeds: dict[str, np.ndarray], outputs: list[tuple[str, np.ndarray]], runs: int,
         work: Path, optimized: Path | None = None) -> tuple[list[str], list[Path]]:
    """(qemu -L args + ort_run command line, output files). OUTPUTS: (name, an array of the
    output's dtype and size, e.g. the host's result)."""
    work.mkdir(parents=True, exist_ok=True)
    cmd = ["-L", str(prefix()), str(build_harness()), str(fetch()), str(model), str(runs)]
    if optimized is not None:
        cmd += ["-O", str(optimized)]
    for k, (name, arr) in enumerate(feeds.items()):
        arr = np.ascontiguousarray(arr)
        f = work / f"ort_in{k}.bin"
        f.write_bytes(arr.tobytes())
        dims = "x".join(str(d) for d in arr.shape) if arr.ndim else "-"
        cmd += ["-i", name, str(ONNX_TYPES[arr.dtype]), dims, str(f)]
    files = []
    for k, (name, ref) in enumerate(outputs):
        f = work / f"ort_out{k}.bin"
        f.unlink(missing_ok=True)
        files.append(f)
        cmd += ["-o", name, str(ONNX_TYPES[ref.dtype]), str(ref.size), str(f)]
    return cmd, files
