"""Local inference: the local backend, its model store, kernels, precision, token budget, windows."""
