"""Models the course builds from a recurrent layer: language model, classifier, tagger.

All three read token ids ``(N, L)`` (batch first), embed them (``nn.Embed``)
or one-hot encode them (``embedding_size=None``, the course's way), run a
``jaxrnn`` RNN/LSTM/GRU stack, and finish with ``nn.Dense``. Submodules are
named ``embed``, ``rnn`` and ``fc``, like the usual torch attributes, so
``interop.load_state_dict`` ports the torch twin directly. All accept
``seq_lengths`` ``(N,)``, and ``cpu_kernel`` (keyword), which they pass to the
recurrent layer (:mod:`jaxrnn.backend`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrnn.losses import linear_cross_entropy
from jaxrnn.rnn import GRU, LSTM, RNN, _StackedRecurrent

Array = jax.Array
CELLS: dict[str, type[_StackedRecurrent]] = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


def recurrent_layer(cell: str, **kwargs: Any) -> _StackedRecurrent:
    """``'rnn' | 'lstm' | 'gru'`` -> the jaxrnn layer, built with ``kwargs``."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}.")
    return CELLS[cell](**kwargs)


class _Recurrent(nn.Module):
    """Shared fields and the embed -> recurrent stack path."""

    vocab_size: int
    hidden_size: int
    cell: str = "lstm"
    num_layers: int = 1
    embedding_size: int | None = None
    dropout: float = 0.0
    bidirectional: bool = False
    nonlinearity: str = "tanh"
    cpu_kernel: str = dataclasses.field(default="auto", kw_only=True)  # the recurrent layer's, see jaxrnn.backend

    def zero_state(self, batch_size: int, dtype: Any = jnp.float32) -> Any:
        """The all-zero recurrent state for ``batch_size`` streams (``h``, or ``(h, c)`` for LSTM)."""
        D = 2 if self.bidirectional else 1
        shape = (D * self.num_layers, batch_size, self.hidden_size)
        return (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) if self.cell == "lstm" else jnp.zeros(shape, dtype)

    def _encode(
        self, ids: Array, state: Any, seq_lengths: Array | None, deterministic: bool
    ) -> tuple[Array, Any, nn.Embed | None]:
        """ids ``(N, L)`` -> (outputs ``(N, L, D*H)``, final state, the embedding module or None)."""
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"{type(self).__name__}: expected integer token ids, got dtype {ids.dtype}.")
        embed = None
        if self.embedding_size is None:
            x = jax.nn.one_hot(ids, self.vocab_size)
        else:
            embed = nn.Embed(self.vocab_size, self.embedding_size, name="embed")
            x = embed(ids)
        if self.dropout > 0:
            x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        options = {"nonlinearity": self.nonlinearity} if self.cell == "rnn" else {}
        rnn = recurrent_layer(
            self.cell,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            batch_first=True,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
            cpu_kernel=self.cpu_kernel,
            name="rnn",
            **options,
        )
        out, state = rnn(x, state, seq_lengths=seq_lengths, deterministic=deterministic)
        if self.dropout > 0:
            out = nn.Dropout(self.dropout)(out, deterministic=deterministic)
        return out, state, embed


class _Softmax(nn.Module):
    """The output layer ``features (..., H) -> logits (..., V)``; parameters exactly ``nn.Dense``'s
    (``kernel (H, V)``, lecun-normal; ``bias (V,)``, zeros). With ``targets`` it returns their mean
    cross-entropy instead of the logits, through :func:`jaxrnn.losses.linear_cross_entropy`."""

    features: int

    @nn.compact
    def __call__(self, x: Array, targets: Array | None = None) -> Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return _output(x, kernel, bias, targets)


def _output(x: Array, kernel: Array, bias: Array, targets: Array | None) -> Array:
    """``x @ kernel + bias`` (the logits), or with ``targets`` their mean cross-entropy, fused."""
    return x @ kernel + bias if targets is None else linear_cross_entropy(x, kernel, bias, targets)


class SequenceModel(_Recurrent):
    """Language model: ``ids (N, L) -> (logits (N, L, vocab_size), state)``.

    ``state`` is the recurrent layer's final state (``h_n``, or ``(h_n, c_n)``
    for LSTM); pass it back as ``state`` to continue a stream (truncated BPTT,
    generation). Call: ``model.apply(variables, ids, state=None,
    seq_lengths=None, deterministic=True)``.

    With ``targets`` (ids ``(N, L)``, the next token at each position) the call
    returns ``(loss, state)`` instead: the mean cross-entropy over all ``N*L``
    positions, computed with the output layer by
    :func:`jaxrnn.losses.linear_cross_entropy` (the logits are never returned,
    and their gradient is formed in the forward pass). Training uses this form;
    the value equals the cross-entropy of the logits to float rounding.

    ``tie_weights=True`` shares the embedding matrix with the output layer
    (Press & Wolf 2017; Inan et al. 2017): ``logits = out @ embed.T + fc_bias``.
    It needs ``embedding_size == hidden_size`` and a unidirectional stack.
    """

    tie_weights: bool = False

    def __post_init__(self) -> None:
        if self.tie_weights and (self.embedding_size != self.hidden_size or self.bidirectional):
            raise ValueError(
                "SequenceModel: tie_weights needs embedding_size == hidden_size and bidirectional=False, got "
                f"embedding_size={self.embedding_size}, hidden_size={self.hidden_size}, "
                f"bidirectional={self.bidirectional}."
            )
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        ids: Array,
        state: Any = None,
        seq_lengths: Array | None = None,
        deterministic: bool = True,
        targets: Array | None = None,
    ) -> tuple[Array, Any]:
        out, state, embed = self._encode(ids, state, seq_lengths, deterministic)
        if targets is not None and seq_lengths is not None:
            raise ValueError(
                "SequenceModel: targets= gives the mean loss over every position, so it cannot be combined with "
                "seq_lengths; compute the logits and use jaxrnn.masked_cross_entropy for padded batches."
            )
        if not self.tie_weights:
            return _Softmax(self.vocab_size, name="fc")(out, targets), state
        bias = self.param("fc_bias", nn.initializers.zeros_init(), (self.vocab_size,))
        return _output(out, embed.embedding.T, bias, targets), state


class Classifier(_Recurrent):
    """Many-to-one: ``ids (N, L) -> logits (N, num_classes)`` from the last layer's final hidden state.

    With ``seq_lengths`` the final state is each sequence's own last valid
    step; bidirectional models concatenate both directions' final states.
    """

    num_classes: int = 2

    @nn.compact
    def __call__(self, ids: Array, seq_lengths: Array | None = None, deterministic: bool = True) -> Array:
        _, state, _ = self._encode(ids, None, seq_lengths, deterministic)
        h_n = state[0] if isinstance(state, tuple) else state  # (D*num_layers, N, H)
        D = 2 if self.bidirectional else 1
        last = jnp.concatenate(list(h_n[-D:]), axis=-1)  # (N, D*H)
        return nn.Dense(self.num_classes, name="fc")(last)


class Tagger(_Recurrent):
    """Many-to-many: ``ids (N, L) -> logits (N, L, num_tags)``, one prediction per step.

    Padded steps (``t >= seq_lengths[n]``) get the head's bias only; mask them in the loss.
    """

    num_tags: int = 2

    @nn.compact
    def __call__(self, ids: Array, seq_lengths: Array | None = None, deterministic: bool = True) -> Array:
        out, _, _ = self._encode(ids, None, seq_lengths, deterministic)
        return nn.Dense(self.num_tags, name="fc")(out)
