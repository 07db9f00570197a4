"""``PackedSequence``, as torch has it: ``pack_padded_sequence``, ``pad_packed_sequence``, ``pack_sequence``.

A packed batch stores only the real steps of each sequence, time step by time
step, longest sequences first::

    data            (sum(lengths), *F)  step t of the batch_sizes[t] longest sequences, for t = 0, 1, ...
    batch_sizes     (T,) int64          how many sequences are longer than t (T = the longest length)
    sorted_indices  (N,) int64 or None  sequence order by decreasing length (None when packed already sorted)
    unsorted_indices (N,) int64 or None its inverse permutation

``data`` is an array that gradients flow through; the other three are numpy
arrays that fix the layout. They are part of the pytree's static structure, so
a jitted function taking a ``PackedSequence`` compiles once per set of lengths:
packing needs the lengths as concrete values, outside ``jit``. For jitted
training on variable lengths pass the padded batch and ``seq_lengths`` to the
layers instead: one compilation for every batch of the same padded shape, and
the same results (outputs past each length are zeros, ``h_n`` is each
sequence's own last step).

``RNN``/``LSTM``/``GRU`` (linen, NNX and :mod:`jaxrnn.functional`) accept a
``PackedSequence`` and return one, as torch's do: the output packed like the
input, ``h_n`` in the original batch order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.padding import pad_sequence

Array = jax.Array


@jax.tree_util.register_pytree_node_class
class PackedSequence:
    """torch's ``PackedSequence``: ``data`` ``(sum(lengths), *F)`` plus the static layout (see the module doc).

    Build it with :func:`pack_padded_sequence` or :func:`pack_sequence`, not by hand.
    """

    def __init__(
        self,
        data: Array,
        batch_sizes: np.ndarray,
        sorted_indices: np.ndarray | None = None,
        unsorted_indices: np.ndarray | None = None,
    ):
        self.data = data
        self.batch_sizes = np.asarray(batch_sizes, np.int64)
        self.sorted_indices = None if sorted_indices is None else np.asarray(sorted_indices, np.int64)
        if unsorted_indices is None and sorted_indices is not None:
            unsorted_indices = np.argsort(self.sorted_indices)
        self.unsorted_indices = None if unsorted_indices is None else np.asarray(unsorted_indices, np.int64)

    def tree_flatten(self) -> tuple[tuple[Array], tuple]:
        layout = tuple(None if a is None else tuple(a.tolist()) for a in self._layout())
        return (self.data,), layout

    @classmethod
    def tree_unflatten(cls, layout: tuple, leaves: tuple[Array]) -> PackedSequence:
        obj = object.__new__(cls)
        obj.data = leaves[0]
        obj.batch_sizes, obj.sorted_indices, obj.unsorted_indices = (
            None if a is None else np.asarray(a, np.int64) for a in layout
        )
        return obj

    def _layout(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        return self.batch_sizes, self.sorted_indices, self.unsorted_indices

    @property
    def lengths(self) -> np.ndarray:
        """``(N,)`` int64: each sequence's length, in the original batch order."""
        sizes = self.batch_sizes
        sorted_lengths = (sizes[None, :] > np.arange(sizes[0])[:, None]).sum(axis=1)
        return sorted_lengths if self.unsorted_indices is None else sorted_lengths[self.unsorted_indices]

    def __iter__(self):  # torch's PackedSequence is a namedtuple: data, batch_sizes, sorted_indices, unsorted_indices
        return iter((self.data, self.batch_sizes, self.sorted_indices, self.unsorted_indices))

    def __repr__(self) -> str:
        return (
            f"PackedSequence(data={getattr(self.data, 'shape', '?')}, batch_sizes={self.batch_sizes.tolist()}, "
            f"sorted_indices={None if self.sorted_indices is None else self.sorted_indices.tolist()})"
        )


def _concrete_lengths(owner: str, lengths: Any, batch: int, max_len: int, enforce_sorted: bool) -> np.ndarray:
    if isinstance(lengths, jax.core.Tracer):
        raise TypeError(
            f"{owner}: lengths must be concrete (packing sets the data's shape), but got a traced value inside "
            "jit/vmap/grad. Pack outside the transform, or pass the padded batch with seq_lengths= to the layer, "
            "which gives the same results and compiles once."
        )
    array = np.asarray(lengths)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise ValueError(f"{owner}: lengths must be a 1-D integer array, got shape {array.shape} dtype {array.dtype}.")
    if array.shape[0] != batch:
        raise ValueError(f"{owner}: got {array.shape[0]} lengths for a batch of {batch} sequences.")
    if batch and array.min() <= 0:
        raise ValueError(
            f"{owner}: every length must be > 0 (as in torch), got {array.tolist()}; a sequence of length 0 "
            "can be run with seq_lengths= on the padded batch instead."
        )
    if batch and array.max() > max_len:
        raise ValueError(f"{owner}: lengths {array.tolist()} exceed the padded length {max_len}.")
    if enforce_sorted and np.any(np.diff(array) > 0):
        raise ValueError(
            f"{owner}: lengths {array.tolist()} are not sorted in decreasing order; sort the batch, or pass "
            "enforce_sorted=False (as in torch)."
        )
    return array.astype(np.int64)


def _gather_index(sizes: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(time, batch)`` indices of the packed rows: step t of ``order[:sizes[t]]``, for each t."""
    time = np.repeat(np.arange(len(sizes)), sizes)
    batch = np.concatenate([order[:s] for s in sizes]) if len(sizes) else np.zeros(0, np.int64)
    return time, batch


def pack_padded_sequence(
    input: Array, lengths: Any, batch_first: bool = False, enforce_sorted: bool = True
) -> PackedSequence:
    """Packs a padded batch: ``input`` ``(L, N, *F)`` (``(N, L, *F)`` if ``batch_first``) and ``lengths`` ``(N,)``.

    As ``torch.nn.utils.rnn.pack_padded_sequence``: ``lengths`` must be
    concrete (a list, numpy array, or a JAX array outside ``jit``), each in
    ``[1, L]``, and in decreasing order unless ``enforce_sorted=False`` (then
    the batch is sorted here and ``sorted_indices`` records how).
    """
    x = jnp.asarray(input)
    if x.ndim < 2:
        raise ValueError(f"pack_padded_sequence: input must be (L, N, *F) or (N, L, *F), got shape {tuple(x.shape)}.")
    if batch_first:
        x = jnp.swapaxes(x, 0, 1)
    max_len, batch = x.shape[:2]
    lengths = _concrete_lengths("pack_padded_sequence", lengths, batch, max_len, enforce_sorted)
    if enforce_sorted:
        order, sorted_indices = np.arange(batch), None
    else:
        order = np.argsort(-lengths, kind="stable")
        sorted_indices = order
    sizes = (lengths[None, :] > np.arange(lengths.max() if batch else 0)[:, None]).sum(axis=1)
    time, rows = _gather_index(sizes, order)
    return PackedSequence(x[time, rows], sizes, sorted_indices)


def pad_packed_sequence(
    sequence: PackedSequence,
    batch_first: bool = False,
    padding_value: float = 0.0,
    total_length: int | None = None,
) -> tuple[Array, np.ndarray]:
    """Unpacks to ``(padded (T, N, *F) or (N, T, *F), lengths (N,) int64)``, in the original batch order.

    As ``torch.nn.utils.rnn.pad_packed_sequence``: ``T`` is the longest
    length, or ``total_length`` (which must be at least that).
    """
    if not isinstance(sequence, PackedSequence):
        raise TypeError(f"pad_packed_sequence: expected a PackedSequence, got {type(sequence).__name__}.")
    sizes = sequence.batch_sizes
    max_len = len(sizes)
    if total_length is not None:
        if total_length < max_len:
            raise ValueError(
                f"pad_packed_sequence: total_length={total_length} is less than the longest sequence ({max_len})."
            )
        max_len = total_length
    batch = int(sizes[0]) if len(sizes) else 0
    data = jnp.asarray(sequence.data)
    order = np.arange(batch) if sequence.sorted_indices is None else sequence.sorted_indices
    time, rows = _gather_index(sizes, order)
    padded = jnp.full((max_len, batch, *data.shape[1:]), padding_value, data.dtype).at[time, rows].set(data)
    return (jnp.swapaxes(padded, 0, 1) if batch_first else padded), sequence.lengths


def pack_sequence(sequences: Sequence[Array | np.ndarray], enforce_sorted: bool = True) -> PackedSequence:
    """Packs a list of ``(L_i, *F)`` arrays, as ``torch.nn.utils.rnn.pack_sequence``."""
    padded, lengths = pad_sequence(sequences)
    return pack_padded_sequence(padded, np.asarray(lengths), enforce_sorted=enforce_sorted)


def unpack_for_layer(owner: str, packed: PackedSequence, seq_lengths: Any) -> tuple[Array, np.ndarray]:
    """A layer's view of a packed input: ``(padded (T, N, F) time-major, lengths (N,))``, original order."""
    if seq_lengths is not None:
        raise ValueError(f"{owner}: a PackedSequence carries its own lengths; do not pass seq_lengths as well.")
    if jnp.ndim(packed.data) != 2:
        raise ValueError(
            f"{owner}: a packed input's data must be (sum(lengths), input_size), got {jnp.shape(packed.data)}."
        )
    return pad_packed_sequence(packed)


def repack_like(output: Array, packed: PackedSequence) -> PackedSequence:
    """A layer's time-major padded ``output`` ``(T, N, H)`` packed with ``packed``'s layout."""
    order = np.arange(output.shape[1]) if packed.sorted_indices is None else packed.sorted_indices
    time, rows = _gather_index(packed.batch_sizes, order)
    return PackedSequence(output[time, rows], packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
