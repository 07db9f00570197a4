"""The output layer and its loss in one function, with a hand-written gradient.

A language model's last step, ``logits = features @ kernel + bias`` followed by
the mean softmax cross-entropy, is most of its training FLOPs (PTB-small:
a 10,000-way softmax over 400 positions per step). Written as two functions,
reverse-mode autodiff keeps the logits, then builds their gradient by
scattering ``-1`` at the targets into a zero array, transposes it and runs a
separate bias reduction. :func:`linear_cross_entropy` computes the gradient
with respect to the logits during the forward pass instead,
``(softmax(logits) - one_hot(targets)) / M``, and keeps only that (the same
size as the logits), so the backward pass is two matrix products and a sum.
The loss and the logits' gradient are optax's own (``jax.vjp`` of
``optax.softmax_cross_entropy_with_integer_labels``), so NaN and Inf come out
where they come out of the two-function form.
The values are those of ``optax.softmax_cross_entropy_with_integer_labels(
features @ kernel + bias, targets).mean()`` and its gradients, up to float
rounding (tests compare them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def linear_cross_entropy(features: Array, kernel: Array, bias: Array, targets: Array) -> Array:
    """Mean cross-entropy of ``features @ kernel + bias`` against integer ``targets``.

    ``features (..., H)``, ``kernel (H, V)``, ``bias (V,)``, ``targets (...)``
    (ints in ``[0, V)``) -> a scalar, the mean over all positions. Differentiable
    in ``features``, ``kernel`` and ``bias`` (reverse mode; ``targets`` get no
    gradient).
    """
    features, kernel, bias, targets = (jnp.asarray(a) for a in (features, kernel, bias, targets))
    if kernel.ndim != 2 or features.shape[-1:] != kernel.shape[:1] or bias.shape != kernel.shape[1:]:
        raise ValueError(
            "linear_cross_entropy: expected features (..., H), kernel (H, V), bias (V,); got "
            f"{features.shape}, {kernel.shape}, {bias.shape}."
        )
    if targets.shape != features.shape[:-1] or not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(
            f"linear_cross_entropy: targets must be integers of shape {features.shape[:-1]} (features without "
            f"their last axis), got {targets.dtype}{list(targets.shape)}."
        )
    return _linear_cross_entropy(features.reshape(-1, kernel.shape[0]), kernel, bias, targets.reshape(-1))


@jax.custom_vjp
def _linear_cross_entropy(x: Array, kernel: Array, bias: Array, t: Array) -> Array:
    """``x (M, H)``, ``kernel (H, V)``, ``bias (V,)``, ``t (M,)`` -> the mean loss."""
    return _forward(x, kernel, bias, t)[0]


def _forward(x: Array, kernel: Array, bias: Array, t: Array) -> tuple[Array, tuple[Array, Array, Array]]:
    logits = x @ kernel + bias  # (M, V)
    # optax's loss and its gradient with respect to the logits, taken now with a cotangent of 1:
    # the same operations as autodiff of the two-function form, so the same values, NaN and Inf included.
    loss, vjp = jax.vjp(lambda z: optax.softmax_cross_entropy_with_integer_labels(z, t).mean(), logits)
    (grad_logits,) = vjp(jnp.ones_like(loss))
    return loss, (x, kernel, grad_logits)


def _backward(residuals: tuple[Array, Array, Array], g: Array) -> tuple[Array, Array, Array, None]:
    x, kernel, grad_logits = residuals
    d = grad_logits * g.astype(grad_logits.dtype)  # (M, V)
    return d @ kernel.T, x.T @ d, d.sum(axis=0), None


_linear_cross_entropy.defvjp(_forward, _backward)
