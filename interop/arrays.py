"""Arrays from torch tensors without importing torch."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor, JAX array or array-like as a numpy array (bfloat16 kept as ml_dtypes' bfloat16)."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            return value.float().numpy().astype(ml_dtypes.bfloat16)
        return value.numpy()
    return np.asarray(value)
