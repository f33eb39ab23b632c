"""Tools above the compile path: per-layer sensitivity analysis, the mixed-precision search,
the compile and analysis reports, guardrails, metrics and the held-aside accuracy check."""
