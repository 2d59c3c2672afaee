"""Training: the one-model trainer, packed training of many runs, and its kernels."""
