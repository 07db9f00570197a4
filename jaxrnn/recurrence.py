"""One recurrent layer in one direction: a cell scanned over the time axis.

:func:`recurrence` is the only loop over time in jaxrnn; every API (functional,
linen, NNX) and every cell run through it. It runs either XLA's loop
(``lax.scan``, optionally with a fused backward pass) or jaxrnn's CPU kernel,
as :func:`jaxrnn.backend.choose` decides.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero, custom_vjp_primal_tree_values

from jaxrnn import backend
from jaxrnn.equations import Cell, State, Weights, gate_blocks, gate_weights, project
from jaxrnn.kernels import cpu

Array = jax.Array


def _mask_step(valid_t: Array | None, new_state: State, h: Array, state: State) -> tuple[State, Array]:
    """On padded steps (``valid_t`` False) keep the old state and emit zeros."""
    if valid_t is None:
        return new_state, h
    keep = valid_t[..., None]
    new_state = tuple(jnp.where(keep, new, old) for new, old in zip(new_state, state))
    return new_state, jnp.where(keep, h, jnp.zeros_like(h))


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """How the loop over time runs; none of these changes a result beyond float rounding.

    Attributes:
      unroll: scan unroll factor (steps per loop iteration).
      hoist_input_projection: compute ``x @ weight_ih.T + bias_ih`` for all steps
        as one matmul before the loop (what cuDNN does); otherwise inside each step.
        Off by default: on a 2-core CPU (jax 0.10.2) the hoisted form measured
        1.2-1.8x slower for LSTM and GRU at batch 32-64, hidden 256-512 (forward
        and gradient), and faster only at teaching sizes.
      fused_backward: differentiate with a hand-written backward pass
        (``jax.custom_vjp``) whose loop over time only carries the state gradient
        (one ``(N, G*H) @ (G*H, P)`` matmul per step); the weight and input
        gradients are then computed for all steps at once as large matmuls (one
        per gate), as cuDNN does. Reverse-mode only (``jax.grad``/``vjp``, not ``jvp``).
        Otherwise the forward loop is ``lax.scan`` and JAX derives the backward.
      cpu_kernel: ``"auto"`` runs the loop in jaxrnn's hand-written CPU kernel
        (``jaxrnn.kernels.cpu``, all three cells, forward and backward) where
        it applies, else the XLA loop; ``"never"`` always runs the XLA loop;
        ``"always"`` raises where the kernel does not apply. The rules (CPU,
        float32, no ``proj_size``, no XLA-loop option, not under ``jax.jvp``, ...)
        are :func:`jaxrnn.backend.choose`'s; both give the same results.
      record_states: also return every step's state (``h``, and ``c`` for LSTM),
        each ``(L, N, ·)``. On padded steps that is the carried, unchanged state.
    """

    unroll: int = 1
    hoist_input_projection: bool = False
    fused_backward: bool = False
    cpu_kernel: str = "auto"
    record_states: bool = False


def recurrence(
    cell: Cell,
    weights: Weights,
    x: Array,
    state: State,
    mask: Array | None,
    *,
    reverse: bool = False,
    options: LoopOptions | None = None,
) -> tuple[State, Array, State | None]:
    """Scans ``cell`` over time: one layer in one direction. The only loop over time in jaxrnn.

    Args:
      cell: the equations (:class:`jaxrnn.equations.Cell`).
      weights: the cell's arrays under suffix-free names (:func:`jaxrnn.params.weights_of`).
      x: ``(L, N, H_in)`` time-major inputs.
      state: tuple of ``(N, ·)`` arrays, the initial state.
      mask: ``(L, N)`` bool, True on valid steps, or None when every step is valid.
        On invalid steps the state is carried unchanged and the output is zero, so
        the forward direction ends at each sequence's last valid step and the
        reverse direction starts there. Padded inputs never enter the cell.
      reverse: run from the last step to the first (the backward direction).
      options: :class:`LoopOptions` (default: all defaults).
    Returns ``(final state, outputs (L, N, P), every step's states or None)``; the last
    is a tuple of ``(L, N, ·)`` arrays when ``options.record_states``.
    """
    options = options or LoopOptions()
    if mask is not None:  # padding never enters the cell: NaN there cannot reach a gradient (as in torch)
        x = jnp.where(mask[..., None], x, jnp.zeros((), x.dtype))
    if choose_backend(cell, weights, x, state, options).kernel:
        return (*_kernel_scan(cell, reverse)(weights, x, state, mask), None)
    if options.fused_backward and not options.record_states:
        scan = _fused_scan(cell, reverse, options.unroll, options.hoist_input_projection)
        return (*scan(weights, x, state, mask), None)
    hoisted, record = options.hoist_input_projection, options.record_states
    ih, hh = gate_weights(weights, cell.num_gates)

    def body(state: State, inputs: tuple) -> tuple[State, Any]:
        x_t, valid_t = inputs  # x_t is already projected (one (N, H) array per gate) when hoisted
        gx_t = x_t if hoisted else project(ih, x_t)
        gh_t = project(hh, state[0])
        new_state, h = _mask_step(valid_t, *cell.combine(gx_t, gh_t, state, weights["weight_hr"]), state)
        return new_state, ((h, new_state) if record else h)

    xs = project(ih, x) if hoisted else x
    final, ys = jax.lax.scan(body, state, (xs, mask), reverse=reverse, unroll=options.unroll)
    return (final, *ys) if record else (final, ys, None)


def choose_backend(cell: Cell, weights: Weights, x: Array, state: State, options: LoopOptions) -> backend.Choice:
    """Which loop runs this call (:func:`jaxrnn.backend.choose`), from the traced arrays."""
    return backend.choose(
        cell.kind,
        cpu_kernel=options.cpu_kernel,
        dtype=_common_dtype(x, weights["weight_ih"], weights["weight_hh"]),
        proj_size=0 if weights["weight_hr"] is None else weights["weight_hr"].shape[0],
        record_states=options.record_states,
        unroll=options.unroll,
        hoist_input_projection=options.hoist_input_projection,
        fused_backward=options.fused_backward,
        steps=x.shape[0],
        forward_mode=backend.forward_mode(weights, x, state),
    )


def _common_dtype(*arrays: Array) -> Any:
    """float32 if every array is float32 (what the kernel needs), else the first dtype that is not."""
    return next((a.dtype for a in arrays if a.dtype != jnp.float32), jnp.dtype(jnp.float32))


def _kernel_scan(cell: Cell, reverse: bool):
    """``scan(weights, x, state, mask) -> (state, outputs)``, forward and backward loops in the CPU kernel.

    The kernel does the input projection inside each step, and its backward pass
    also computes the weight, bias and (only where JAX wants it) input gradients.
    ``jax.export`` of the forward lowers the XLA loop in the kernel's place.
    """
    kind = cell.kind
    xla_loop = _fused_scan(cell, reverse, unroll=1, hoisted=False)

    def exportable(x, weight_ih, weight_hh, bias_ih, bias_hh, state0, valid):  # the XLA loop, same results
        weights = {"weight_ih": weight_ih, "weight_hh": weight_hh, "bias_ih": bias_ih, "bias_hh": bias_hh}
        final, outputs = xla_loop({**weights, "weight_hr": None}, x, state0, valid > 0.5)
        return outputs, final

    def valid_of(x: Array, mask: Array | None) -> Array:
        return jnp.ones(x.shape[:2], jnp.float32) if mask is None else mask.astype(jnp.float32)

    def arrays(weights: Weights) -> tuple:
        return weights["weight_ih"], weights["weight_hh"], weights["bias_ih"], weights["bias_hh"]

    @jax.custom_vjp
    def scan(weights: Weights, x: Array, state0: State, mask: Array | None) -> tuple[State, Array]:
        # no gradient wanted: this kernel call keeps nothing for a backward pass
        valid = valid_of(x, mask)
        outputs, final = cpu.forward(kind, x, *arrays(weights), state0, valid, reverse=reverse, fallback=exportable)
        return final, outputs

    def forward(weights, x, state0, mask):  # symbolic_zeros: each array comes as CustomVJPPrimal
        x_perturbed = x.perturbed
        weights, x, state0, mask = custom_vjp_primal_tree_values((weights, x, state0, mask))
        valid = valid_of(x, mask)
        outputs, states, z = cpu.forward_train(kind, x, *arrays(weights), state0, valid, reverse=reverse)
        last, units = (0 if reverse else -1), state0[0].shape[-1]  # states may carry zero padding units
        final = tuple(states[last, s, :, :units] for s in range(len(state0)))
        # whether x's gradient is wanted rides in the residuals' structure: an empty tuple or None
        return (final, outputs), (weights, x, valid, z, states, state0, () if x_perturbed else None)

    def backward(residuals: tuple, cotangents: tuple) -> tuple:
        weights, x, valid, z, states, state0, input_grad = residuals
        d_final, d_outputs = cotangents
        d_final = tuple(_dense(d, s.shape) for d, s in zip(d_final, state0))
        d_outputs = _dense(d_outputs, (*x.shape[:2], state0[0].shape[-1]))
        grads, dx, d_state0 = cpu.backward(
            kind,
            z,
            states,
            state0,
            d_outputs,
            d_final,
            valid,
            x,
            weights["weight_ih"],
            weights["weight_hh"],
            bias=weights["bias_ih"] is not None,
            input_grad=input_grad is not None,
            reverse=reverse,
        )
        return {**grads, "weight_hr": None}, dx, d_state0, None

    scan.defvjp(forward, backward, symbolic_zeros=True)
    return scan


def _dense(cotangent: Any, shape: tuple[int, ...]) -> Array:
    """A float32 cotangent as an array: zeros of ``shape`` where JAX passed a symbolic zero."""
    if isinstance(cotangent, SymbolicZero):
        return jnp.zeros(shape, jnp.float32)
    return cotangent


def _fused_scan(cell: Cell, reverse: bool, unroll: int, hoisted: bool):
    """``scan(weights, x, state, mask) -> (state, outputs)`` with the fused backward pass as its VJP."""

    def forward(weights: Weights, x: Array, state0: State, mask: Array | None):
        ih, hh = gate_weights(weights, cell.num_gates)

        def body(state: State, inputs: tuple) -> tuple[State, tuple]:
            x_t, valid_t = inputs
            gx_t = x_t if hoisted else project(ih, x_t)
            gh_t = project(hh, state[0])
            new_state, h = cell.combine(gx_t, gh_t, state, weights["weight_hr"])
            new_state, h = _mask_step(valid_t, new_state, h, state)
            return new_state, (h, gx_t, gh_t, state)

        xs = project(ih, x) if hoisted else x
        final, (outputs, gx, gh, previous) = jax.lax.scan(body, state0, (xs, mask), reverse=reverse, unroll=unroll)
        return (final, outputs), (weights, x, mask, gx, gh, previous)

    def backward(residuals: tuple, cotangents: tuple) -> tuple:
        weights, x, mask, gx, gh, previous = residuals
        d_final, d_outputs = cotangents
        weight_hr = weights["weight_hr"]
        ih_rows = gate_blocks(weights["weight_ih"], cell.num_gates)  # (H, H_in) each
        hh_rows = gate_blocks(weights["weight_hh"], cell.num_gates)  # (H, P) each

        def body(carry: tuple, inputs: tuple) -> tuple[tuple, tuple]:
            d_state, d_hr = carry
            gx_t, gh_t, state_t, d_out_t, valid_t = inputs

            def step(gx_t, gh_t, state_t, weight_hr):
                new_state, h = cell.combine(gx_t, gh_t, state_t, weight_hr)
                return _mask_step(valid_t, new_state, h, state_t)

            _, vjp = jax.vjp(step, gx_t, gh_t, state_t, weight_hr)
            dgx_t, dgh_t, d_prev, d_hr_t = vjp((d_state, d_out_t))
            d_prev = (d_prev[0] + _sum_matmuls(dgh_t, hh_rows),) + tuple(d_prev[1:])
            if d_hr is not None:
                d_hr = d_hr + d_hr_t
            return (d_prev, d_hr), (dgx_t, dgh_t)

        d_hr0 = None if weight_hr is None else jnp.zeros_like(weight_hr)
        (d_state0, d_hr), (dgx, dgh) = jax.lax.scan(
            body, (tuple(d_final), d_hr0), (gx, gh, previous, d_outputs, mask), reverse=not reverse, unroll=unroll
        )
        # Everything that does not feed the recurrence: one large matmul per gate, over all L*N rows; the
        # gates' blocks stacked along the rows, never joined along the feature axis (jaxrnn.equations says why).
        has_bias = weights["bias_ih"] is not None
        grads = {
            "weight_ih": jnp.concatenate([jnp.einsum("lnh,lni->hi", d, x) for d in dgx]),
            "weight_hh": jnp.concatenate([jnp.einsum("lnh,lnp->hp", d, previous[0]) for d in dgh]),
            "bias_ih": jnp.concatenate([d.sum((0, 1)) for d in dgx]) if has_bias else None,
            "bias_hh": jnp.concatenate([d.sum((0, 1)) for d in dgh]) if has_bias else None,
            "weight_hr": d_hr,
        }
        return grads, _sum_matmuls(dgx, ih_rows), d_state0, None

    @jax.custom_vjp
    def scan(weights: Weights, x: Array, state0: State, mask: Array | None) -> tuple[State, Array]:
        return forward(weights, x, state0, mask)[0]

    scan.defvjp(forward, backward)
    return scan


def _sum_matmuls(gates: tuple[Array, ...], rows: tuple[Array, ...]) -> Array:
    """``sum_g gates[g] @ rows[g]``: ``G`` gate cotangents ``(..., H)`` times a weight's row blocks ``(H, K)``.

    The same as joining the gates into ``(..., G*H)`` and multiplying by the ``(G*H, K)`` weight, without the join.
    """
    total = gates[0] @ rows[0]
    for d, w in zip(gates[1:], rows[1:]):
        total = total + d @ w
    return total
