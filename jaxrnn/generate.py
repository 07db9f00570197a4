"""Generation: feed each prediction back in, one token at a time, compiled with ``lax.scan``."""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def pick_token(logits: Array, key: Array, temperature: float, top_k: int | None, greedy: bool) -> Array:
    """One token id from ``logits (V,)``: argmax, or a sample at ``temperature`` among the ``top_k`` best."""
    if greedy:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k is not None:
        kth_best = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth_best, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


@partial(jax.jit, static_argnames=("model", "num_tokens", "top_k", "greedy"))
def _generate(
    model: nn.Module,
    variables: Any,
    prompt: Array,
    key: Array,
    temperature: Array,
    num_tokens: int,
    top_k: int | None,
    greedy: bool,
    state: Any,
) -> Array:
    """``prompt (N, P)`` -> new ids ``(N, num_tokens)``; every row continues independently."""
    logits, state = model.apply(variables, prompt, state)

    def body(carry: tuple[Array, Any], step_key: Array) -> tuple[tuple[Array, Any], Array]:
        last_logits, state = carry  # (N, V)
        token = pick_token(last_logits, step_key, temperature, top_k, greedy)  # (N,)
        logits, state = model.apply(variables, token[:, None], state)
        return (logits[:, -1], state), token

    _, tokens = jax.lax.scan(body, (logits[:, -1], state), jax.random.split(key, num_tokens))
    return tokens.T


def generate(
    model: nn.Module,
    variables: Any,
    prompt: Array,
    num_tokens: int,
    key: Array | None = None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    state: Any = None,
) -> Array:
    """Continues ``prompt`` (ids ``(P,)``, or a batch ``(N, P)``; P >= 1) by ``num_tokens`` tokens from a
    :class:`SequenceModel`.

    ``state`` is the recurrent state the prompt starts from (``model.zero_state(N)``'s structure, batch 1 for an
    unbatched prompt; zeros when None): a one-to-many model (captioning) computes it from its input and generates
    from it, a whole batch at once. The prompt is run once to prime the state; then each step feeds the chosen
    token back in (greedy argmax, or sampling with ``temperature`` and optional ``top_k``; the rows of a batch
    are sampled independently). The loop is a ``lax.scan`` inside one ``jit``. Returns the new ids
    ``(num_tokens,)`` or ``(N, num_tokens)``, without the prompt. A bidirectional model is refused
    (``ValueError``): it cannot generate autoregressively.
    """
    if getattr(model, "bidirectional", False):
        raise ValueError(
            f"generate: {type(model).__name__} is bidirectional; generation feeds each token back in one at a "
            "time, so it needs a unidirectional model (a bidirectional one saw the future while training)."
        )
    prompt = jnp.asarray(prompt)
    if prompt.ndim not in (1, 2) or prompt.shape[-1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(
            f"generate: prompt must be non-empty ids, (P,) or a batch (N, P), got {prompt.dtype}{tuple(prompt.shape)}."
        )
    batch = prompt.shape[0] if prompt.ndim == 2 else 1
    for leaf in jax.tree.leaves(state):  # recurrent states are (D*num_layers, N, H)
        if jnp.ndim(leaf) != 3 or leaf.shape[1] != batch:
            raise ValueError(
                f"generate: state must be (D*num_layers, {batch}, H) arrays for a prompt of shape "
                f"{tuple(prompt.shape)} (model.zero_state({batch})'s structure), got one of shape {jnp.shape(leaf)}."
            )
    if num_tokens < 1:
        raise ValueError(f"generate: num_tokens must be >= 1, got {num_tokens}.")
    if not greedy:
        if key is None:
            raise ValueError("generate: sampling needs a key (or pass greedy=True).")
        if temperature <= 0:
            raise ValueError(f"generate: temperature must be > 0, got {temperature}.")
    vocab = getattr(model, "vocab_size", None)
    if top_k is not None and (top_k < 1 or (vocab is not None and top_k > vocab)):
        raise ValueError(f"generate: top_k must be in [1, {vocab}], got {top_k}.")
    key = jax.random.key(0) if key is None else key
    rows = prompt if prompt.ndim == 2 else prompt[None]
    tokens = _generate(model, variables, rows, key, jnp.float32(temperature), num_tokens, top_k, greedy, state)
    return tokens if prompt.ndim == 2 else tokens[0]
