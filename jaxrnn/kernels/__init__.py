"""Hand-written kernels that replace XLA's loop where it is slow (see :mod:`jaxrnn.kernels.cpu`)."""
