"""The C backend: dependency-free C99 for Arm Cortex-A and Cortex-M (see docs/c-backend.md)."""
