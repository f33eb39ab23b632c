"""Built-in passes, one module per pass, named after it (``fold_constants.py`` <-> ``fold-constants``).

Writing a pass: see docs/writing-passes.md. Import the pieces from here::

    from qc.passes import Pass, PassContext, register_pass
"""
from qc.pm import Pass, PassContext, register_pass, register_pipeline
from qc.quant.schemes import OPTIMIZATION_PIPELINE

from . import (  # noqa: F401
    bias_correction,
    bind_inputs,
    calibrate,
    check_kernels,
    cse,
    dce,
    dynamic_per_token,
    equalize,
    fix_decoder_shapes,
    fix_shapes,
    fold_batchnorm,
    fold_constants,
    fold_outlier_gather,
    fold_qdq,
    fold_shapes,
    fuse_add_layernorm,
    fuse_add_rmsnorm,
    fuse_attention,
    fuse_cached_attention,
    fuse_gelu,
    fuse_layernorm,
    fuse_matmul_nbits_rows,
    fuse_rmsnorm,
    fuse_rope,
    fuse_silu,
    fuse_silu_mul,
    guard_int8_rows,
    inline_if,
    insert_qdq,
    legalize,
    lower_qop,
    propagate_shapes,
    quantize_kv_cache,
    quantize_weights,
    remove_identity,
    requantize_outputs,
    rotate,
    smooth_quant,
    split_outliers,
    to_fp16,
    w4a8_per_token,
)

register_pipeline(
    "default",
    OPTIMIZATION_PIPELINE,
    "the optimization pipeline `qc compile` runs before the backend",
)

__all__ = ["Pass", "PassContext", "register_pass", "register_pipeline"]


def _register_schemes() -> None:
    """``qc passes`` lists each ``--quant`` scheme's pipeline (target-neutral defaults)."""
    from qc.quant.schemes import SCHEMES, QuantOptions, pipeline

    for name, s in SCHEMES.items():
        register_pipeline(name, pipeline(QuantOptions(name)), f"--quant {name}: {s.description}")


_register_schemes()
