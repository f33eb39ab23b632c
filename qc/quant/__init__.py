"""Quantization: calibration statistics and data, weight algorithms, schemes.

The passes that use these live in ``qc.passes`` (``calibrate``, ``quantize-weights``,
``insert-qdq``, ``fold-qdq``, ``lower-qop``, ``to-fp16``); ``qc.quant.schemes`` turns a
``--quant`` scheme and its options into a pipeline of them. See docs/quantization.md.
"""
