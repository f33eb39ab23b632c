"""The C kernels a target's kernel table may name (``c_kernel`` of its entries), and the choice
of the int8 gemm variant from that table.

The runtime is compiled with one ``-DQC_KERNEL_*`` variant per model, so the variant is a
per-compile choice: the ``qc_gemm_s8_*`` kernel that the target's table names for the int8 unit
key ``MatMul int8 x int8`` (any output: the C epilogue dequantizes or requantizes the int32
accumulators). A target whose table names none (a user's target file without ``c_kernel``)
falls back to its ISA features (``packing.variant_for``).
"""
from __future__ import annotations

from dataclasses import dataclass

from qc.errors import QCError

from .packing import VARIANTS, variant_for


@dataclass(frozen=True)
class CKernel:
    """A kernel of the C runtime that lowers the units of (op, activation, weight) in ``covers``."""

    name: str
    covers: tuple[tuple[str, str, str], ...]
    variant: str | None = None  # for qc_gemm_s8_*: the -DQC_KERNEL_* variant
    note: str = ""


def _gemm_s8(variant: str) -> CKernel:
    return CKernel(f"qc_gemm_s8_{variant}", (("MatMul", "int8", "int8"), ("Gemm", "int8", "int8"),
                                            ("Conv", "int8", "int8")), variant,
                   "qc_gemm_s8 built with the variant's -D flag (Conv: qc_im2col_s8 first)")


C_KERNELS: dict[str, CKernel] = {k.name: k for k in [
    *(_gemm_s8(v) for v in VARIANTS),
    CKernel("qc_matmul_f32", (("MatMul", "float32", "float32"),
                              # quantized operands the C backend dequantizes to float32 first
                              ("MatMul", "uint8", "uint8"), ("MatMul", "uint8", "int8"),
                              ("MatMul", "float32", "int8"))),
    CKernel("qc_gemm_f32", (("Gemm", "float32", "float32"),)),
    CKernel("qc_conv2d_f32", (("Conv", "float32", "float32"), ("Conv", "uint8", "uint8"))),
    CKernel("qc_matmul_f16", (("MatMul", "float16", "float16"),)),
    # MatMulNBits: which of these runs is lower_w4.kernel_for's choice (accuracy level, variant)
    CKernel("qc_matmul_f32_s4", (("MatMulNBits", "float32", "int4"),), note="weight-only int4, float32 activations"),
    *(CKernel("qc_gemm_s4a8" + ("" if v == "portable" else "_" + v), (("MatMulNBits", "float32", "int4"),),
              note="W4A8: int8 activations quantized per row and block of 32 at run time")
      for v in ("portable", "dotprod", "i8mm")),
    # qc.MatMulNBitsRows (fuse-matmul-nbits-rows of w4a8-per-token's form): one source for every variant
    CKernel("qc_gemm_s4a8r", (("MatMulNBits", "float32", "int4"),),
            note="W4A8 per token: int8 activations with one scale per row, integer block scales, int32 across K"),
]}
"""Every C kernel a kernel-table entry may name, by name."""


def gemm_variant(target) -> str:
    """The qc_gemm_s8 variant of *target*: from its kernel table, else from its features."""
    names = {k.c_kernel for dev in getattr(target, "devices", ()) for k in getattr(target, "kernels", {}).get(dev, ())
             if k.op == "MatMul" and k.act == "int8" and k.weight == "int8" and k.c_kernel}
    variants = sorted({C_KERNELS[n].variant for n in names if n in C_KERNELS and C_KERNELS[n].variant})
    if len(variants) > 1:
        raise QCError(f"target '{target.name}' names several qc_gemm_s8 variants ({', '.join(variants)})",
                      hint="the C runtime is built with one variant: name the same qc_gemm_s8_* in every int8 entry")
    if variants:
        return variants[0]
    return variant_for(tuple(getattr(target, "features", ()) or ()))


def unlowered_entries(target) -> list[str]:
    """The kernel-table entries of a C target whose ``c_kernel`` is missing, unknown, or does not
    cover the entry's (op, activation, weight): one line each naming the target, entry and kernel."""
    bad = []
    for dev in target.devices:
        for i, k in enumerate(target.kernels.get(dev, ())):
            entry = f"{target.name}: kernels.{dev}[{i}] ({k.describe()})"
            ck = C_KERNELS.get(k.c_kernel) if k.c_kernel else None
            if k.c_kernel is None:
                bad.append(f"{entry}: names no c_kernel")
            elif ck is None:
                bad.append(f"{entry}: c_kernel '{k.c_kernel}' is not a kernel of the C backend")
            elif (k.op, k.act, k.weight) not in ck.covers:
                bad.append(f"{entry}: c_kernel '{k.c_kernel}' does not lower {k.op} {k.act} x {k.weight}")
    return bad
