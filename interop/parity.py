"""Running a torch recurrent module and its jaxrnn twin on the same input, and measuring the gap."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from interop.modules import from_torch

_LAYER_KEY = re.compile(r"^(?P<prefix>.*?)weight_ih(?P<stacked>_l0)?$")
_GATES = {1: "RNN", 3: "GRU", 4: "LSTM"}


def torch_forward(module: Any, x: Any, h_0: Any = None, seq_lengths: Any = None) -> tuple[Any, Any]:
    """``module(x, h_0)``; with ``seq_lengths`` it packs (``enforce_sorted=False``) and unpacks to ``x``'s length.

    This is the torch computation that jaxrnn's ``seq_lengths`` reproduces.
    Lengths must be >= 1 (torch cannot pack empty sequences).
    """
    if seq_lengths is None:
        return module(x, h_0)
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    time_axis = 1 if module.batch_first else 0
    packed = pack_padded_sequence(x, seq_lengths.cpu(), batch_first=module.batch_first, enforce_sorted=False)
    out, state = module(packed, h_0)
    out, _ = pad_packed_sequence(out, batch_first=module.batch_first, total_length=x.shape[time_axis])
    return out, state


def _flat(state: Any) -> list[np.ndarray]:
    parts = state if isinstance(state, (tuple, list)) else (state,)
    return [np.asarray(p.detach().numpy() if hasattr(p, "detach") else p) for p in parts]


def max_abs_diffs(module: Any, *, batch: int = 3, seq_len: int = 7, seed: int = 0) -> dict[str, float]:
    """Largest absolute differences between ``module`` (torch) and ``from_torch(module)`` on random input.

    Runs both with a random initial state, once on full sequences and once
    with random ``seq_lengths`` in ``[1, seq_len]`` (one of them ``seq_len``).
    Returns ``{'output': .., 'h_n': .., ['c_n': ..,] 'output (seq_lengths)': .., ...}``;
    for a cell, one step's ``{"h'": .., ["c'": ..]}``. Torch runs in eval mode (no
    dropout), as jaxrnn does by default; the module's own mode is restored after.
    """
    was_training = module.training
    module.eval()
    try:
        return _max_abs_diffs(module, batch, seq_len, seed)
    finally:
        module.train(was_training)


def _max_abs_diffs(module: Any, batch: int, seq_len: int, seed: int) -> dict[str, float]:
    import torch

    jax_module, variables = from_torch(module)
    dtype = next(module.parameters()).dtype
    gen = torch.Generator().manual_seed(seed)
    if type(module).__name__.endswith("Cell"):
        x = torch.randn(batch, module.input_size, generator=gen, dtype=dtype)
        hx = torch.randn(batch, module.hidden_size, generator=gen, dtype=dtype)
        hx = (
            (hx, torch.randn(batch, module.hidden_size, generator=gen, dtype=dtype))
            if type(module).__name__ == "LSTMCell"
            else hx
        )
        with torch.no_grad():
            t_state = module(x, hx)
        j_hx = tuple(jnp.asarray(h.numpy()) for h in hx) if isinstance(hx, tuple) else jnp.asarray(hx.numpy())
        j_state = jax_module.apply(variables, jnp.asarray(x.numpy()), j_hx)
        return {name: float(np.abs(a - b).max()) for name, a, b in zip(("h'", "c'"), _flat(j_state), _flat(t_state))}
    D = 2 if module.bidirectional else 1
    out_size = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
    shape = (batch, seq_len) if module.batch_first else (seq_len, batch)
    x = torch.randn(*shape, module.input_size, generator=gen, dtype=dtype)
    h_0 = torch.randn(D * module.num_layers, batch, out_size, generator=gen, dtype=dtype)
    if type(module).__name__ == "LSTM":
        h_0 = (h_0, torch.randn(D * module.num_layers, batch, module.hidden_size, generator=gen, dtype=dtype))
    lengths = torch.randint(1, seq_len + 1, (batch,), generator=gen)
    lengths[0] = seq_len

    names = ["h_n", "c_n"] if type(module).__name__ == "LSTM" else ["h_n"]
    jax_h0 = tuple(jnp.asarray(h.numpy()) for h in h_0) if isinstance(h_0, tuple) else jnp.asarray(h_0.numpy())
    diffs = {}
    for tag, torch_lengths in (("", None), (" (seq_lengths)", lengths)):
        with torch.no_grad():
            t_out, t_state = torch_forward(module, x, h_0, torch_lengths)
        j_lengths = None if torch_lengths is None else jnp.asarray(torch_lengths.numpy())
        j_out, j_state = jax_module.apply(variables, jnp.asarray(x.numpy()), jax_h0, seq_lengths=j_lengths)
        diffs["output" + tag] = float(np.abs(np.asarray(j_out) - t_out.numpy()).max())
        for name, a, b in zip(names, _flat(j_state), _flat(t_state)):
            diffs[name + tag] = float(np.abs(a - b).max())
    return diffs


def find_recurrent_layers(state_dict: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Recurrent layers and cells in a state_dict: ``{prefix: (torch class name, constructor kwargs)}``.

    The kind is read from the gate count (rows of ``weight_ih`` over hidden
    size: 1 RNN, 3 GRU, 4 LSTM); an RNN's nonlinearity cannot be read from
    weights and is left to the caller (default tanh).
    """
    found = {}
    for key in state_dict:
        match = _LAYER_KEY.match(key)
        if not match:
            continue
        prefix, stacked = match["prefix"], bool(match["stacked"])
        suffix = "_l0" if stacked else ""
        w_ih = np.shape(state_dict[key])
        w_hh = np.shape(state_dict.get(f"{prefix}weight_hh{suffix}", ()))
        if len(w_ih) != 2 or len(w_hh) != 2:
            continue
        w_hr = f"{prefix}weight_hr{suffix}"
        hidden = np.shape(state_dict[w_hr])[1] if w_hr in state_dict else w_hh[1]
        kind = _GATES.get(w_ih[0] // hidden) if w_ih[0] % hidden == 0 else None
        if kind is None:
            continue
        config: dict[str, Any] = {
            "input_size": int(w_ih[1]),
            "hidden_size": int(hidden),
            "bias": f"{prefix}bias_ih{suffix}" in state_dict,
        }
        if stacked:
            layers = 1
            while f"{prefix}weight_ih_l{layers}" in state_dict:
                layers += 1
            config["num_layers"] = layers
            config["bidirectional"] = f"{prefix}weight_ih_l0_reverse" in state_dict
            if w_hr in state_dict:
                config["proj_size"] = int(np.shape(state_dict[w_hr])[0])
        found[prefix] = (kind if stacked else kind + "Cell", config)
    return found


# Flax-convention cells whose weights interop moves to and from a torch layer: Flax's own (torch's weights in
# Flax's layout) and jaxrnn's Flax* cells (torch's weights and names, Flax's call convention).
FLAX_CELLS = {
    "LSTM": ("LSTMCell", "OptimizedLSTMCell", "jaxrnn.FlaxLSTMCell"),
    "GRU": ("GRUCell", "jaxrnn.FlaxGRUCell"),
    "RNN": ("SimpleCell", "jaxrnn.FlaxRNNCell"),
}


def flax_cell_diffs(
    layer: Any, cell: str, api: str = "linen", *, batch: int = 3, seq_len: int = 7, seed: int = 0
) -> dict[str, float]:
    """Largest absolute differences between a bidirectional torch layer and its weights in Flax's wrappers.

    ``layer`` is a one-layer bidirectional ``torch.nn.LSTM``/``GRU``/``RNN``
    (``batch_first=True``, any float dtype); ``cell`` one of
    :data:`FLAX_CELLS` (Flax's ``'LSTMCell'``, ``'OptimizedLSTMCell'``,
    ``'GRUCell'``, ``'SimpleCell'``, or jaxrnn's ``'jaxrnn.FlaxLSTMCell'``...).
    The weights go through :func:`interop.load_state_dict` into
    ``nn.Bidirectional(nn.RNN(cell), nn.RNN(cell))`` (``api='linen'``) or
    the ``nnx`` one; both run from zero states on random inputs with random
    ``seq_lengths`` (one of them ``seq_len``) against torch's packed run.

    Returns ``{'output (forward)', 'output (backward)', 'h_n (forward)', ...,
    ['c_n (...)',] 'exported output'}``: outputs on the valid steps only
    (Flax leaves its own values in padded steps), and torch's output again
    after :func:`interop.to_state_dict` loaded into a fresh torch layer with
    ``strict=True``.
    """
    import torch

    from interop.state_dict import load_state_dict, to_state_dict

    kind = type(layer).__name__
    if kind not in FLAX_CELLS or cell not in FLAX_CELLS[kind]:
        raise ValueError(
            f"flax_cell_diffs: cell must be one of {FLAX_CELLS.get(kind)} for torch's {kind}, got {cell!r}"
        )
    if not (layer.bidirectional and layer.num_layers == 1 and layer.batch_first):
        raise ValueError("flax_cell_diffs: expected a one-layer bidirectional torch layer with batch_first=True.")
    dtype = next(layer.parameters()).dtype
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq_len, layer.input_size, generator=gen, dtype=dtype)
    lengths = torch.randint(1, seq_len + 1, (batch,), generator=gen)
    lengths[0] = seq_len
    layer.eval()
    with torch.no_grad():
        want_out, want_state = torch_forward(layer, x, None, lengths)
    want_out, want_states = want_out.numpy(), _flat(want_state)

    model, rename, export_rename = _flax_bidirectional(layer, cell, api)
    j_x, j_lengths = jnp.asarray(x.numpy()), jnp.asarray(lengths.numpy())
    if api == "linen":
        variables = load_state_dict(model, layer.state_dict(), j_x, rename=rename)
        carry, out = model.apply(variables, j_x, seq_lengths=j_lengths, return_carry=True)
        exported = to_state_dict(variables, rename=export_rename)
    else:
        load_state_dict(model, layer.state_dict(), rename=rename)
        carry, out = model(j_x, seq_lengths=j_lengths, return_carry=True)
        exported = to_state_dict(model, rename=export_rename)

    valid = (np.arange(seq_len)[None, :] < lengths.numpy()[:, None])[..., None]
    out = np.where(valid, np.asarray(out), 0)
    H = layer.hidden_size
    diffs = {}
    for d, direction in enumerate(("forward", "backward")):
        half = slice(d * H, (d + 1) * H)
        diffs[f"output ({direction})"] = float(np.abs(out[..., half] - want_out[..., half]).max())
        states = carry[d] if isinstance(carry[d], tuple) else (carry[d],)
        if cell in ("LSTMCell", "OptimizedLSTMCell"):
            states = states[::-1]  # Flax's own LSTM carry is (c, h); torch's and jaxrnn's (h, c)
        for name, got, want in zip(("h_n", "c_n"), states, want_states):
            diffs[f"{name} ({direction})"] = float(np.abs(np.asarray(got) - want[d]).max())

    again = type(layer)(**_torch_config(layer), dtype=dtype)
    again.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    with torch.no_grad():
        again_out, _ = torch_forward(again.eval(), x, None, lengths)
    diffs["exported output"] = float(np.abs(again_out.numpy() - want_out).max())
    return diffs


def _torch_config(layer: Any) -> dict[str, Any]:
    config = {k: getattr(layer, k) for k in ("input_size", "hidden_size", "batch_first", "bidirectional")}
    if type(layer).__name__ == "RNN":
        config["nonlinearity"] = layer.nonlinearity
    return config


def _flax_bidirectional(layer: Any, cell: str, api: str) -> tuple[Any, Any, Any]:
    """The Flax model for :func:`flax_cell_diffs`, and the ``rename=`` pair its cells need (jaxrnn's Flax* cells
    keep torch's names under ``forward_rnn.cell.``; Flax's own are found by :mod:`interop.flax_cells`)."""
    import flax.linen as nn
    import jax
    from flax import nnx

    import jaxrnn
    import jaxrnn.nnx

    dtype = jnp.dtype(str(next(layer.parameters()).dtype).removeprefix("torch."))
    relu = getattr(layer, "nonlinearity", "tanh") == "relu"
    I, H = layer.input_size, layer.hidden_size

    def make(seed: int) -> Any:
        if cell.startswith("jaxrnn."):
            extra = {"nonlinearity": "relu"} if relu else {}
            if api == "linen":
                return getattr(jaxrnn, cell[7:])(I, H, param_dtype=dtype, **extra)
            return getattr(jaxrnn.nnx, cell[7:])(I, H, param_dtype=dtype, rngs=nnx.Rngs(seed), **extra)
        extra = {"activation_fn": jax.nn.relu} if relu else {}
        # dtype= too: nnx.SimpleCell computes in float32 unless told otherwise.
        if api == "linen":
            return getattr(nn, cell)(H, dtype=dtype, param_dtype=dtype, **extra)
        return getattr(nnx, cell)(I, H, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(seed), **extra)

    if api == "linen":
        model = nn.Bidirectional(nn.RNN(make(0)), nn.RNN(make(1)))
    else:
        model = nnx.Bidirectional(nnx.RNN(make(0)), nnx.RNN(make(1)))
    if not cell.startswith("jaxrnn."):
        return model, None, None
    pairs = {}
    for name in layer.state_dict():
        base, _, rest = name.partition("_l0")
        pairs[name] = ("backward_rnn" if rest == "_reverse" else "forward_rnn") + ".cell." + base
    return model, pairs, {v: k for k, v in pairs.items()}
