"""Fused kernels (Triton) for packed training, and their launch settings."""
