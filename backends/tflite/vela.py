"""Arm's Vela on a TFLite model: the NPU / CPU split, cycles, SRAM and flash, as Vela reports them.

    model.tflite -> vela --accelerator-config A --system-config S --memory-mode M -> model_vela.tflite

Vela replaces what the NPU runs with ``ethos-u`` custom operators and leaves the rest as TFLite
operators for the host: the operators of its output that are not ``ethos-u`` are the CPU
operators (the truth for placement). Its summary CSV gives the cycles, the SRAM and flash used
and the MACs of the NPU part; the MACs of the CPU operators are counted here from their shapes.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np

from qc.errors import QCError

MISSING = ("Ethos-U targets compile through Arm's Vela, which is not installed",
           "pip install ethos-u-vela (or pip install 'qc[npu]'), or --emit onnx / --emit c")


def have_vela() -> bool:
    try:
        import ethosu.vela  # noqa: F401
    except ImportError:
        return False
    return True


def run_vela(tflite_path: str, out_dir: str, *, accelerator_config: str, system_config: str,
             memory_mode: str) -> dict[str, Any]:
    """Compile ``tflite_path`` with Vela; write ``<name>_vela.tflite`` into ``out_dir``; return the
    summary (see the module docstring). A QCError when Vela is missing or fails."""
    if not have_vela():
        raise QCError(MISSING[0], hint=MISSING[1])
    import ethosu.vela

    config = os.path.join(os.path.dirname(os.path.dirname(ethosu.vela.__file__)), "config_files", "Arm", "vela.ini")
    name = os.path.splitext(os.path.basename(tflite_path))[0]
    with tempfile.TemporaryDirectory(prefix="qc-vela-") as tmp:
        cmd = [sys.executable, "-c", "import sys; from ethosu.vela.vela import main; sys.exit(main())",
               tflite_path, "--output-dir", tmp, "--config", config,
               "--accelerator-config", accelerator_config, "--system-config", system_config,
               "--memory-mode", memory_mode]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise QCError("Vela failed: " + " / ".join(tail), where=tflite_path,
                          hint="the TFLite file is kept; run vela on it to see the whole message")
        summary_csv = os.path.join(tmp, f"{name}_summary_{system_config}.csv")
        with open(summary_csv, newline="") as f:
            row = next(csv.DictReader(f))
        produced = os.path.join(tmp, f"{name}_vela.tflite")
        from qc.fileio import atomic_write

        dest = os.path.join(out_dir, f"{name}_vela.tflite")
        with open(produced, "rb") as src, atomic_write(dest) as dst:
            shutil.copyfileobj(src, dst)
    split = operator_split(dest)
    counts = {k: int(m.group(1)) for k in ("CPU", "NPU")
              if (m := re.search(rf"^{k} operators = (\d+)", proc.stdout, re.M))}
    npu_macs = int(float(row["nn_macs"]))
    cpu_macs = sum(op["macs"] for op in split["cpu"])
    flash = float(row["off_chip_flash_memory_used"]) + float(row["on_chip_flash_memory_used"])
    return {
        "vela": _vela_version(), "accelerator_config": accelerator_config, "system_config": system_config,
        "memory_mode": memory_mode, "output": dest,
        "npu_operators": counts.get("NPU", 0), "cpu_operators": counts.get("CPU", len(split["cpu"])),
        "command_streams": split["npu_ops"],
        "cpu": [dict(op) for op in split["cpu"]],
        "npu_macs": npu_macs, "cpu_macs": cpu_macs,
        "npu_mac_share": npu_macs / (npu_macs + cpu_macs) if npu_macs + cpu_macs else 0.0,
        "cycles_total": int(float(row["cycles_total"])), "cycles_npu": int(float(row["cycles_npu"])),
        "inference_seconds": float(row["inference_time"]), "clock_hz": float(row["core_clock"]),
        "sram_kib": float(row["sram_memory_used"]), "dram_kib": float(row["dram_memory_used"]),
        "flash_kib": flash,
    }


def _vela_version() -> str:
    from importlib.metadata import version

    return version("ethos-u-vela")


def operator_split(vela_tflite: str) -> dict[str, Any]:
    """The operators of Vela's output: how many ``ethos-u`` custom operators (NPU command streams,
    each standing for one or more original operators) and, for each other operator, its type,
    output tensor name and MACs."""
    from ethosu.vela.tflite import BuiltinOperator as BO
    from ethosu.vela.tflite.Model import Model

    with open(vela_tflite, "rb") as f:
        buf = f.read()
    m = Model.GetRootAs(buf, 0)
    names = {v: k for k, v in vars(BO.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        custom = oc.CustomCode()
        codes.append(custom.decode() if custom else names.get(code, str(code)))
    npu, cpu = 0, []
    sg = m.Subgraphs(0)
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        kind = codes[op.OpcodeIndex()]
        if kind == "ethos-u":
            npu += 1
            continue
        out = sg.Tensors(op.Outputs(0))
        ins = [sg.Tensors(op.Inputs(j)) for j in range(op.InputsLength()) if op.Inputs(j) >= 0]
        cpu.append({"op": kind, "output": out.Name().decode(), "macs": _macs(kind, ins, out)})
    return {"npu_ops": npu, "cpu": cpu}


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()


def _macs(kind: str, ins: list, out: Any) -> int:
    o = _shape(out)
    if kind == "CONV_2D" and len(ins) > 1:
        w = _shape(ins[1])
        return int(np.prod(o)) * int(np.prod(w[1:]))
    if kind == "DEPTHWISE_CONV_2D" and len(ins) > 1:
        w = _shape(ins[1])
        return int(np.prod(o)) * w[1] * w[2]
    if kind == "FULLY_CONNECTED" and len(ins) > 1:
        return int(np.prod(o)) * _shape(ins[1])[-1]
    if kind == "BATCH_MATMUL" and len(ins) > 1:
        return int(np.prod(o)) * _shape(ins[0])[-1]
    return 0


def format_vela(v: dict[str, Any]) -> str:
    ops = v["npu_operators"] + v["cpu_operators"]
    lines = [f"vela {v['vela']} ({v['accelerator_config']}, {v['system_config']}, {v['memory_mode']})"
             + (f": {v['output']}" if v.get("output") else ", the truth for placement:"),
             f"  operators: {v['npu_operators']} on the NPU, {v['cpu_operators']} on the CPU"
             + (f" ({100 * v['npu_operators'] / ops:.1f}% on the NPU)" if ops else "")
             + f"; {v['command_streams']} NPU command stream(s)",
             f"  MACs: {v['npu_macs']:,} on the NPU, {v['cpu_macs']:,} on the CPU "
             f"({100 * v['npu_mac_share']:.1f}% on the NPU)",
             f"  cycles: {v['cycles_total']:,} ({v['cycles_npu']:,} NPU) = {1e3 * v['inference_seconds']:.2f} ms "
             f"at {v['clock_hz'] / 1e6:.0f} MHz",
             f"  memory: SRAM {v['sram_kib']:.1f} KiB, flash {v['flash_kib']:.1f} KiB"
             + (f", DRAM {v['dram_kib']:.1f} KiB" if v["dram_kib"] else "")]
    diff = v.get("disagreements")
    if diff is not None:
        lines.append(f"  qc's table and Vela: {len(diff)} of {v.get('units', '?')} node units placed differently"
                     + (":" if diff else ""))
        groups: dict[tuple[str, str, str], list[str]] = {}
        for d in diff:
            groups.setdefault((d["qc"], d["vela"], d["explanation"]), []).append(d["node"])
        for (qc_dev, vela_dev, why), nodes in groups.items():
            lines.append(f"    {len(nodes)} x qc {qc_dev}, Vela {vela_dev}: {why} (e.g. {', '.join(nodes[:3])})")
    if v["cpu"]:
        kinds: dict[str, int] = {}
        for op in v["cpu"]:
            kinds[op["op"]] = kinds.get(op["op"], 0) + 1
        lines.append("  on the CPU: " + ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items())))
    return "\n".join(lines) + "\n"


def compare_placement(units: list[dict[str, Any]], tflite_ops: list[dict[str, Any]],
                      vela: dict[str, Any]) -> list[dict[str, Any]]:
    """The node units where qc's table (``units``: check-kernels' placement) and Vela disagree.
    A unit is on Vela's CPU when one of the TFLite operators lowered from its node is a CPU
    operator of Vela's output, else on the NPU."""
    cpu_outputs = {op["output"] for op in vela["cpu"]}
    lowered: dict[str, str] = {}
    for op in tflite_ops:
        dev = "cpu" if op["output"] in cpu_outputs else "npu"
        if lowered.get(op["node"]) != "cpu":
            lowered[op["node"]] = dev
    out = []
    for u in units:
        dev = lowered.get(u["node"])
        if dev is None or dev == u["to"]:
            continue
        why = u.get("reason") or ""
        if u["to"] == "cpu" and dev == "npu":
            dtypes = u.get("dtypes") or []
            if dtypes and all(d == "float32" for d in dtypes):  # a float unit (attention's MatMul)
                because = ("the TFLite backend quantizes the float unit to int8 (calibration ranges), "
                           "and Vela runs it on the NPU")
            elif "float32" in " ".join(dtypes) or "no kernel" in why:
                because = ("the TFLite backend requantizes the unit's float output (from the next "
                           "QuantizeLinear or the calibration range), and Vela runs it on the NPU")
            else:
                because = "Vela supports it on the NPU; qc's table has no entry"
        else:
            because = "Vela leaves the operator on the CPU (" + ", ".join(
                sorted({op["op"] for op in vela["cpu"] if op["output"] in
                        {t["output"] for t in tflite_ops if t["node"] == u["node"]}})) + ")"
        out.append({"node": u["node"], "op": u["op"], "dtypes": u.get("dtypes"), "qc": u["to"], "vela": dev,
                    "qc_reason": why, "explanation": because})
    return out
