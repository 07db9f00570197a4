"""Sequence to sequence: an encoder reads the source, a decoder writes the target from the encoder's final state.

:class:`Seq2Seq` (Flax linen) holds both, with optional attention over the
encoder's outputs (Luong et al. 2015, "general" score, attention after the
decoder's recurrent layer, so the decoder's recurrence runs as one scanned
layer in training). Shapes, with ``S`` source and ``T`` target steps::

    src (N, S) ids, src_lengths (N,)    -> encoder outputs (N, S, H), final state
    tgt_in (N, T) ids (BOS + target[:-1]), tgt_lengths (N,) optional
                                        -> logits (N, T, tgt_vocab)     teacher forcing

Without attention: ``logits = W_out h_t``. With attention: ``score(s) = h_t .
W_a e_s`` over the source steps ``s < src_lengths`` (padding never attended),
``c_t = sum_s softmax(score)_s e_s``, ``logits = W_out tanh(W_c [c_t; h_t])``. The weights
``softmax(score)``, ``(N, T, S)``, are sown as Flax intermediates, to be looked at::

    logits, state = model.apply(variables, src, src_lengths, tgt_in, mutable=["intermediates"])
    weights = state["intermediates"]["attention_weights"][0]  # (N, T, S), zero on source padding

:func:`greedy_decode` and :func:`beam_search` generate under ``jit`` (one
``lax.scan`` over the output steps). Generation is autoregressive, so the
decoder reads one way; the encoder does too here, because its final state
(same cell, layers and size) is the decoder's initial state.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrnn.models import recurrent_layer
from jaxrnn.padding import lengths_to_mask

Array = jax.Array


class Seq2Seq(nn.Module):
    """Encoder-decoder over token ids; see the module docstring for the equations and shapes."""

    src_vocab_size: int
    tgt_vocab_size: int
    hidden_size: int
    embedding_size: int = 32
    cell: str = "lstm"
    num_layers: int = 1
    attention: bool = False

    def setup(self) -> None:
        self.src_embed = nn.Embed(self.src_vocab_size, self.embedding_size)
        self.tgt_embed = nn.Embed(self.tgt_vocab_size, self.embedding_size)
        self.encoder = recurrent_layer(
            self.cell, hidden_size=self.hidden_size, num_layers=self.num_layers, batch_first=True
        )
        self.decoder = recurrent_layer(
            self.cell, hidden_size=self.hidden_size, num_layers=self.num_layers, batch_first=True
        )
        if self.attention:
            self.score = nn.Dense(self.hidden_size, use_bias=False)  # W_a
            self.combine = nn.Dense(self.hidden_size, use_bias=False)  # W_c
        self.out = nn.Dense(self.tgt_vocab_size)

    def encode(self, src: Array, src_lengths: Array) -> tuple[Array, Any]:
        """``(encoder outputs (N, S, H), final state)``; outputs past each length are zero."""
        return self.encoder(self.src_embed(src), seq_lengths=src_lengths)

    def decode(
        self, tgt_in: Array, state: Any, enc_out: Array, src_lengths: Array, tgt_lengths: Array | None = None
    ) -> tuple[Array, Any]:
        """``(logits (N, T, tgt_vocab), state)`` for ``tgt_in`` ``(N, T)``, continuing from ``state``; with
        ``tgt_lengths`` ``(N,)`` the state is each target's own last valid step (padding ignored)."""
        h, state = self.decoder(self.tgt_embed(tgt_in), state, seq_lengths=tgt_lengths)  # (N, T, H)
        if self.attention:
            scores = jnp.einsum("nth,nsh->nts", h, self.score(enc_out))  # h_t . W_a e_s
            valid = lengths_to_mask(src_lengths, enc_out.shape[1])[:, None, :]  # (N, 1, S)
            weights = jax.nn.softmax(jnp.where(valid, scores, -jnp.inf), axis=-1)  # (N, T, S)
            self.sow("intermediates", "attention_weights", weights)  # kept only where 'intermediates' is mutable
            context = jnp.einsum("nts,nsh->nth", weights, enc_out)
            h = jnp.tanh(self.combine(jnp.concatenate([context, h], axis=-1)))
        return self.out(h), state

    def __call__(self, src: Array, src_lengths: Array, tgt_in: Array, tgt_lengths: Array | None = None) -> Array:
        """Teacher forcing: ``logits (N, T, tgt_vocab)`` of each next target token. Positions past
        ``tgt_lengths`` are padding: mask them in the loss (``jaxrnn.masked_cross_entropy``)."""
        enc_out, state = self.encode(src, src_lengths)
        return self.decode(tgt_in, state, enc_out, src_lengths, tgt_lengths)[0]


@partial(jax.jit, static_argnames=("model", "max_len", "bos"))
def greedy_decode(model: Seq2Seq, variables: Any, src: Array, src_lengths: Array, bos: int, max_len: int) -> Array:
    """``(N, max_len)`` ids: each step feeds back the most likely token, starting from ``bos``."""
    enc_out, state = model.apply(variables, src, src_lengths, method=Seq2Seq.encode)
    first = jnp.full((src.shape[0], 1), bos, jnp.int32)

    def step(carry, _):
        token, state = carry
        logits, state = model.apply(variables, token, state, enc_out, src_lengths, method=Seq2Seq.decode)
        token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)[:, None]
        return (token, state), token[:, 0]

    _, tokens = jax.lax.scan(step, (first, state), None, length=max_len)
    return tokens.T


@partial(jax.jit, static_argnames=("model", "max_len", "bos", "eos", "beam_size"))
def beam_search(
    model: Seq2Seq, variables: Any, src: Array, src_lengths: Array, bos: int, eos: int, beam_size: int, max_len: int
) -> Array:
    """``(N, max_len)`` ids: the most probable sequence among ``beam_size`` kept at each step (sum of log
    probabilities; a beam that wrote ``eos`` is finished and keeps its score, padded with ``eos``).
    ``beam_size=1`` is :func:`greedy_decode` (up to ``eos`` padding)."""
    n, k = src.shape[0], beam_size
    enc_out, state = model.apply(variables, src, src_lengths, method=Seq2Seq.encode)
    repeat = partial(jnp.repeat, repeats=k, axis=0)  # (N, ...) -> (N*k, ...), beams of a sentence together
    enc_out, src_lengths = repeat(enc_out), repeat(src_lengths)
    state = jax.tree.map(lambda s: jnp.repeat(s, k, axis=1), state)  # states are (layers, N, H)
    scores = jnp.tile(jnp.array([0.0] + [-jnp.inf] * (k - 1)), n)  # only beam 0 is live at the start
    tokens = jnp.full((n * k, 1), bos, jnp.int32)
    history = jnp.zeros((n * k, max_len), jnp.int32)
    done = jnp.zeros(n * k, bool)

    def step(carry, t):
        tokens, state, scores, history, done = carry
        logits, state = model.apply(variables, tokens, state, enc_out, src_lengths, method=Seq2Seq.decode)
        logp = jax.nn.log_softmax(logits[:, -1], axis=-1)  # (N*k, V)
        vocab = logp.shape[-1]
        # A finished beam can only continue with eos, at no cost.
        logp = jnp.where(done[:, None], jnp.where(jnp.arange(vocab) == eos, 0.0, -jnp.inf), logp)
        total = (scores[:, None] + logp).reshape(n, k * vocab)
        scores, flat = jax.lax.top_k(total, k)  # (N, k)
        parent = (flat // vocab + jnp.arange(n)[:, None] * k).reshape(-1)
        token = (flat % vocab).reshape(-1).astype(jnp.int32)
        history = history[parent].at[:, t].set(token)
        state = jax.tree.map(lambda s: s[:, parent], state)
        done = done[parent] | (token == eos)
        return (token[:, None], state, scores.reshape(-1), history, done), None

    carry, _ = jax.lax.scan(step, (tokens, state, scores, history, done), jnp.arange(max_len))
    _, _, scores, history, _ = carry
    best = jnp.argmax(scores.reshape(n, k), axis=-1) + jnp.arange(n) * k
    return history[best]
