"""Variable-length sequences: padding, masks and length checks.

A batch is padded to a common length ``L`` and ``seq_lengths`` ``(N,)`` says
how many leading steps of each sequence are real; the layers then give what
``torch.nn.utils.rnn.pack_padded_sequence(..., enforce_sorted=False)`` gives,
with static shapes that ``jit`` can compile once. (torch's own packed form is
in :mod:`jaxrnn.packing`, for code ported as it is.)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def pad_sequence(
    sequences: Sequence[Array | np.ndarray],
    batch_first: bool = False,
    padding_value: float = 0.0,
) -> tuple[Array, Array]:
    """Pads a list of ``(L_i, *F)`` arrays to ``(L, N, *F)`` (``(N, L, *F)`` when ``batch_first``).

    Like ``torch.nn.utils.rnn.pad_sequence``, but also returns the lengths
    ``(N,)`` int32 to pass as ``seq_lengths``. ``L`` is the longest ``L_i``.
    """
    if len(sequences) == 0:
        raise ValueError("pad_sequence: got an empty list of sequences.")
    arrays = [jnp.asarray(s) for s in sequences]
    trailing = arrays[0].shape[1:]
    for i, a in enumerate(arrays):
        if a.ndim < 1 or a.shape[1:] != trailing:
            raise ValueError(
                f"pad_sequence: sequence {i} has shape {tuple(a.shape)}; every sequence must be "
                f"(L_i, *{trailing}) like sequence 0 {tuple(arrays[0].shape)}."
            )
    lengths = [a.shape[0] for a in arrays]
    max_len = max(lengths)
    padded = jnp.stack(
        [
            jnp.pad(a, [(0, max_len - a.shape[0])] + [(0, 0)] * len(trailing), constant_values=padding_value)
            for a in arrays
        ],
        axis=0 if batch_first else 1,
    )
    return padded, jnp.asarray(lengths, dtype=jnp.int32)


def lengths_to_mask(seq_lengths: Array, max_len: int, batch_first: bool = True) -> Array:
    """Boolean mask of valid steps: ``(N, max_len)`` (``(max_len, N)`` when not ``batch_first``).

    ``mask[n, t]`` is True when ``t < seq_lengths[n]``.
    """
    steps = jnp.arange(max_len)
    mask = steps[None, :] < jnp.asarray(seq_lengths)[:, None]
    return mask if batch_first else mask.T


def check_seq_lengths(owner: str, seq_lengths: Array | np.ndarray, batch_size: int, max_len: int) -> Array:
    """Validates ``seq_lengths`` and returns it as a JAX int array of shape ``(N,)``.

    Dtype and shape are always checked; the range ``0 <= length <= L`` is
    checked whenever the values are concrete (not under ``jit``).
    """
    if isinstance(seq_lengths, (list, tuple)):
        seq_lengths = np.asarray(seq_lengths)
    dtype = getattr(seq_lengths, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{owner}: seq_lengths must be an integer array, got dtype {dtype}.")
    shape = tuple(np.shape(seq_lengths))
    if shape != (batch_size,):
        raise ValueError(f"{owner}: seq_lengths must have shape ({batch_size},) (one per sequence), got {shape}.")
    if not isinstance(seq_lengths, jax.core.Tracer):
        values = np.asarray(seq_lengths)
        bad = values[(values < 0) | (values > max_len)]
        if bad.size:
            raise ValueError(
                f"{owner}: seq_lengths must lie in [0, {max_len}] (the padded length), got {bad.tolist()}."
            )
    return jnp.asarray(seq_lengths)
