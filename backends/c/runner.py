"""Build an emitted model with its harness and run it (host, qemu-aarch64 or qemu-system-arm)."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from qc.ir import DType

from . import toolchain


def load_report(out_dir: str | Path) -> dict:
    """The report emit_c wrote to OUT_DIR/report.json (shapes as lists), with out_dir set."""
    import json

    report = json.loads((Path(out_dir) / "report.json").read_text())
    return {"out_dir": str(out_dir), **report}


def build_model(report: dict, kind: str = "host", cpu: str | None = None, *, exe: str | Path | None = None,
                extra_flags: Sequence[str] = ()) -> Path:
    """Compile the emitted sources plus harness.c (emit_c(..., harness=True)) into an executable."""
    out = Path(report["out_dir"])
    if kind == "cortex-m":
        _check_board_ram(report, cpu)
    sources = [out / s for s in report["sources"]] + [out / "harness.c"]
    flags = list(report["macros"]) + (["-pthread"] if "threads" in report else []) + list(extra_flags)
    if report["incbin"]:
        flags.append(f"-Wa,-I{out}")
    name = exe or out / f"harness-{kind}{'-' + cpu if cpu else ''}"
    return toolchain.build(sources, Path(name), kind, cpu, extra_flags=flags, include_dirs=[out],
                           firmware="decode" in report)


# the harness's own RAM: stack, newlib's heap and semihosting buffers (a generous bound)
_HARNESS_RAM = 256 << 10


def _check_board_ram(report: dict, cpu: str | None) -> None:
    """Refuse, before building, a model whose weights, arena and inputs/outputs overflow the RAM of
    the qemu board the harness runs on (the linker script's RAM region)."""
    from qc.errors import QCError

    m = toolchain.machine_for(cpu or "")
    if "decode" in report:
        _check_firmware_memory(report, m)
        return
    io = sum(int(np.prod(shape)) * np.dtype(DType.parse(dt).numpy).itemsize
             for _, dt, shape in report["inputs"] + report["outputs"])
    need = report["arena_bytes"] + report["weight_bytes"] + io + _HARNESS_RAM
    if need > m.ram_bytes:
        raise QCError(f"the model needs {need} bytes of RAM (arena {report['arena_bytes']}, weights "
                      f"{report['weight_bytes']}, inputs and outputs {io}, harness {_HARNESS_RAM}), more than "
                      f"the {m.ram_bytes} of qemu's {m.machine} board", where=report["out_dir"],
                      hint="it would not run there: compile it with smaller --shape or --quant w8a8, or run it "
                           "on a board with more RAM")


def _check_firmware_memory(report: dict, m: toolchain.MachineM) -> None:
    """The C decode runtime's firmware: the weights in the device layout's FLASH region (or its
    RAM when it has none), the arena and the cache (report "decode" "ram_bytes") in its RAM."""
    from qc.errors import QCError

    regions = toolchain.region_bytes(m.script(firmware=True))
    ram = report["decode"]["ram_bytes"] + _HARNESS_RAM + (0 if "FLASH" in regions else report["weight_bytes"])
    if ram > regions["RAM"]:
        raise QCError(f"the decoder needs {ram} bytes of RAM (arena and KV cache {report['decode']['ram_bytes']}, "
                      f"harness {_HARNESS_RAM}{'' if 'FLASH' in regions else ', weights'}), more than the "
                      f"{regions['RAM']} of qemu's {m.machine} board", where=report["out_dir"],
                      hint="compile it with a smaller --max-context or --prefill-chunk")
    if "FLASH" in regions and report["weight_bytes"] > regions["FLASH"]:
        raise QCError(f"the decoder's weights ({report['weight_bytes']} bytes) do not fit the "
                      f"{regions['FLASH']} bytes of flash of qemu's {m.machine} board", where=report["out_dir"],
                      hint="quantize it (--quant w8a8 or w4a8)")


def run_model(exe: Path, report: dict, inputs: Mapping[str, np.ndarray], kind: str = "host",
              cpu: str | None = None, timeout: float = 300.0, runs: int = 1) -> list[np.ndarray]:
    """Write the inputs as raw files, run the harness, read the outputs back (dtype and shape
    from report). With runs > 1 the harness repeats the model and the last call's CPU seconds
    per run are in ``run_model.seconds``."""
    work = Path(report["out_dir"]).resolve() / "io"
    work.mkdir(exist_ok=True)
    args = []
    for i, (name, dt, shape) in enumerate(report["inputs"]):
        arr = np.ascontiguousarray(np.asarray(inputs[name]).astype(DType.parse(dt).numpy).reshape(shape))
        path = work / f"in{i}.bin"
        path.write_bytes(arr.tobytes())
        args.append(str(path))
    outs = [work / f"out{i}.bin" for i in range(len(report["outputs"]))]
    for p in outs:
        p.unlink(missing_ok=True)
    repeat = ["-r", str(runs)] if runs > 1 else []
    proc = toolchain.run(exe, kind, cpu, repeat + args + [str(p) for p in outs], timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{exe} exited with {proc.returncode}: {proc.stdout}{proc.stderr}")
    if runs > 1:
        m = re.search(r"(\d+) runs ([0-9.]+) s", proc.stderr)
        run_model.seconds = float(m.group(2)) / runs if m else float("nan")
    return [np.frombuffer(p.read_bytes(), DType.parse(dt).numpy).reshape(shape)
            for p, (_, dt, shape) in zip(outs, report["outputs"])]
