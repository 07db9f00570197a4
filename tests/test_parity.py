"""jaxrnn's RNN/LSTM/GRU against torch.nn.RNN/LSTM/GRU over random configurations (hypothesis), in every API.

Each drawn configuration runs through jaxrnn's three APIs (``api``): the Flax
linen layers (``jaxrnn.LSTM``), the Flax NNX layers (``jaxrnn.nnx.LSTM``
loaded through ``interop.load_state_dict``, differentiated with
``nnx.value_and_grad``) and the functional core (``jaxrnn.functional.lstm``),
against one torch run. The three build the same XLA program, so it is
compiled once per configuration and read back from the run's compilation
cache (tests/conftest.py) by the other two.
Each example builds a torch module, copies its ``state_dict`` into jaxrnn
*unchanged* (same keys, same shapes), runs both on the same input, initial
state and lengths (torch through ``pack_padded_sequence``), and compares:
outputs and final states (absolute), then the gradients of a random linear
function of every output with respect to the input, the initial state and
every parameter (relative to the largest torch gradient of that tensor).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

import interop
import jaxrnn
import jaxrnn.nnx
from interop import torch_forward

APIS = ["linen", "nnx", "functional"]

TOLERANCES = {"float32": (1e-5, 1e-4), "float64": (1e-10, 1e-10)}  # (values absolute, gradients relative)


@st.composite
def cases(draw, kind: str) -> dict:
    hidden = draw(st.integers(1, 6))
    config = {
        "input_size": draw(st.integers(1, 5)),
        "hidden_size": hidden,
        "num_layers": draw(st.integers(1, 3)),
        "bias": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
        "bidirectional": draw(st.booleans()),
    }
    if kind == "RNN":
        config["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    if kind == "LSTM":
        config["proj_size"] = draw(st.integers(0, hidden - 1))
    config["unroll"] = draw(st.sampled_from([1, 3]))
    config["hoist_input_projection"] = draw(st.booleans())
    config["fused_backward"] = draw(st.booleans())
    config["cpu_kernel"] = draw(st.sampled_from(["auto", "never"]))  # auto: float32 runs in the CPU kernel
    length = draw(st.integers(1, 6))
    batch = draw(st.one_of(st.none(), st.integers(1, 4)))  # None: unbatched input
    lengths = None
    if batch is not None and draw(st.booleans()):
        lengths = draw(st.lists(st.integers(1, length), min_size=batch, max_size=batch))
    return {
        "kind": kind,
        "config": config,
        "length": length,
        "batch": batch,
        "lengths": lengths,
        "given_h0": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(b).max(initial=0.0)
    diff = np.abs(a - b).max(initial=0.0)
    return diff / scale if scale > 0 else diff


def jax_value_and_grad(case: dict, dtype: str, api: str, state_dict: dict, seq_lengths, loss_of):
    """``f(params, x, h0) -> ((loss, (out, states)), (d_params, d_x, d_h0))``, jitted, in ``api``.

    ``loss_of(out, state)`` turns the layer's results into ``(loss, (out, states))``.
    """
    kind, config = case["kind"], case["config"]
    hx = (lambda h0: tuple(h0) if kind == "LSTM" else h0[0]) if case["given_h0"] else (lambda h0: None)
    if api == "linen":
        module = getattr(jaxrnn, kind)(**config, param_dtype=jnp.dtype(dtype))

        def loss_fn(params, x, h0):
            return loss_of(*module.apply({"params": params}, x, hx(h0), seq_lengths=seq_lengths))

        return jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True))
    if api == "functional":
        fn = getattr(jaxrnn.functional, kind.lower())
        options = {k: v for k, v in config.items() if k not in ("input_size", "hidden_size", "bias")}

        def loss_fn(params, x, h0):
            return loss_of(*fn(params, x, hx(h0), seq_lengths=seq_lengths, **options))

        return jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True))
    # NNX: a module built from torch's constructor arguments and loaded through the bridge, then differentiated
    # with nnx.value_and_grad, its gradient State read back under torch's names. jax.jit over the parameters as
    # a dict (nnx.merge inside) rather than nnx.jit over the model: the program is then the one linen builds,
    # read back from the run's compilation cache instead of compiled a third time (nnx.jit's own tests:
    # tests/test_nnx.py).
    model = getattr(jaxrnn.nnx, kind)(**config, param_dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
    interop.load_state_dict(model, state_dict)
    model.eval()
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    loaded = model.params()
    for name, value in state_dict.items():  # what the bridge loaded is torch's tensor, unchanged
        np.testing.assert_array_equal(np.asarray(loaded[name]), value.detach().numpy(), err_msg=name)

    def loss_fn(params, x, h0):  # named as in linen and functional: the program's name is part of the cache key
        model = nnx.merge(graphdef, nnx.State({k: nnx.Param(v) for k, v in params.items()}), rest)

        def model_loss(model, x, h0):
            return loss_of(*model(x, hx(h0), seq_lengths=seq_lengths))

        grad_fn = nnx.value_and_grad(model_loss, argnums=(0, 1, 2), has_aux=True)
        (value, aux), (g_model, g_x, g_h0) = grad_fn(model, x, h0)
        g_params = {path[-1]: v[...] for path, v in nnx.to_flat_state(g_model)}
        return (value, aux), (g_params, g_x, g_h0)

    return jax.jit(loss_fn)


def run_torch(case: dict, dtype: str) -> tuple[dict, dict]:
    """Runs torch on ``case``: ``(inputs for jaxrnn, torch results)``, results {'output', 'states', 'grads'}."""
    kind, config = case["kind"], case["config"]
    rng = np.random.default_rng(case["seed"])
    torch.manual_seed(case["seed"])
    jax_options = ("unroll", "hoist_input_projection", "fused_backward", "cpu_kernel")
    torch_config = {k: v for k, v in config.items() if k not in jax_options}
    torch_module = getattr(torch.nn, kind)(**torch_config, dtype=getattr(torch, dtype))

    D = 2 if config["bidirectional"] else 1
    stack = D * config["num_layers"]
    out_size = config.get("proj_size") or config["hidden_size"]
    L, N = case["length"], case["batch"]
    if N is None:
        x_shape, lead = (L, config["input_size"]), (stack,)
    else:
        x_shape = (N, L, config["input_size"]) if config["batch_first"] else (L, N, config["input_size"])
        lead = (stack, N)
    state_shapes = [lead + (out_size,)] + ([lead + (config["hidden_size"],)] if kind == "LSTM" else [])
    x = rng.standard_normal(x_shape).astype(dtype)
    h0 = [rng.standard_normal(s).astype(dtype) for s in state_shapes] if case["given_h0"] else []

    def pack_state(parts):
        if not parts:
            return None
        return tuple(parts) if kind == "LSTM" else parts[0]

    tx = torch.tensor(x, requires_grad=True)
    th0 = [torch.tensor(h, requires_grad=True) for h in h0]
    lengths = case["lengths"]
    t_lengths = None if lengths is None else torch.tensor(lengths)
    t_out, t_state = torch_forward(torch_module, tx, pack_state(th0), t_lengths)
    t_states = list(t_state) if kind == "LSTM" else [t_state]
    w_out = rng.standard_normal(tuple(t_out.shape)).astype(dtype)
    w_states = [rng.standard_normal(tuple(s.shape)).astype(dtype) for s in t_states]
    loss = (t_out * torch.tensor(w_out)).sum() + sum((s * torch.tensor(w)).sum() for s, w in zip(t_states, w_states))
    loss.backward()
    torch_grads = {"x": tx.grad, **{f"h_0[{i}]": h.grad for i, h in enumerate(th0)}}
    torch_grads.update({name: p.grad for name, p in torch_module.named_parameters()})
    torch_result = {
        "output": t_out.detach().numpy(),
        "states": [s.detach().numpy() for s in t_states],
        "grads": {k: v.numpy() for k, v in torch_grads.items()},
    }
    inputs = {"state_dict": torch_module.state_dict(), "x": x, "h0": h0, "w_out": w_out, "w_states": w_states}
    return inputs, torch_result


def run_jax(case: dict, dtype: str, api: str, inputs: dict) -> dict:
    """Runs jaxrnn's ``api`` on the inputs :func:`run_torch` made, from torch's state_dict unchanged."""
    kind = case["kind"]
    state_dict, w_out, w_states = inputs["state_dict"], inputs["w_out"], inputs["w_states"]
    params = {k: jnp.asarray(v.detach().numpy()) for k, v in state_dict.items()}
    lengths = case["lengths"]
    seq_lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)

    def loss_of(out, state):
        states = list(state) if kind == "LSTM" else [state]
        value = (out * w_out).sum() + sum((s * w).sum() for s, w in zip(states, w_states))
        return value, (out, states)

    grad_fn = jax_value_and_grad(case, dtype, api, state_dict, seq_lengths, loss_of)
    h0 = [jnp.asarray(h) for h in inputs["h0"]]
    (_, (j_out, j_states)), (g_params, g_x, g_h0) = grad_fn(params, jnp.asarray(inputs["x"]), h0)
    jax_grads = {"x": g_x, **{f"h_0[{i}]": g for i, g in enumerate(g_h0)}, **g_params}
    return {
        "output": np.asarray(j_out),
        "states": [np.asarray(s) for s in j_states],
        "grads": {k: np.asarray(v) for k, v in jax_grads.items()},
    }


def check_case(case: dict, dtype: str, parity_log, apis: tuple[str, ...] = ("linen",)) -> None:
    """Torch once, then each of ``apis`` against it. The three APIs build the same XLA program, so all but
    the first read it back from the run's compilation cache (tests/conftest.py)."""
    value_tol, grad_tol = TOLERANCES[dtype]
    inputs, t = run_torch(case, dtype)
    for api in apis:
        j = run_jax(case, dtype, api, inputs)
        assert j["output"].shape == t["output"].shape, api
        assert j["output"].dtype == np.dtype(dtype), api
        out_err = np.abs(j["output"] - t["output"]).max(initial=0.0)
        assert out_err <= value_tol, f"{api}: output differs by {out_err}"
        parity_log("output (abs)", dtype, out_err)
        for i, (a, b) in enumerate(zip(j["states"], t["states"])):
            assert a.shape == b.shape, api
            err = np.abs(a - b).max(initial=0.0)
            assert err <= value_tol, f"{api}: state {i} differs by {err}"
            parity_log("final states (abs)", dtype, err)
        assert set(j["grads"]) == set(t["grads"]), api
        for name, b in t["grads"].items():
            err = rel_err(j["grads"][name], b)
            assert err <= grad_tol, f"{api}: gradient of {name} differs by {err} (relative)"
            parity_log("gradients (rel to max)", dtype, err)
        parity_log.count(case["kind"])


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@given(data=st.data())
def test_parity_float32(kind, data, parity_log):
    """Each drawn configuration through all three APIs."""
    check_case(data.draw(cases(kind)), "float32", parity_log, APIS)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@given(data=st.data())
def test_parity_float64(kind, data, parity_log):
    with jax.enable_x64(True):
        check_case(data.draw(cases(kind)), "float64", parity_log, APIS)


# A fixed float64 grid through XLA's loop (not hypothesis draws): every cell, unroll 2, 3 and 4 over a length
# the unroll divides and one it does not, both directions (bidirectional), batch 4, hidden 5, input 1: the
# shape at which XLA's CPU compiler miscompiled the gradient of a split into gates on AVX-512 hosts
# (tests/test_xla_miscompile.py).
UNROLL_GRID = [(unroll, length) for unroll in (2, 3, 4) for length in (2 * unroll, unroll + 1)]


@pytest.mark.parametrize("unroll, length", UNROLL_GRID, ids=[f"unroll{u}-L{n}" for u, n in UNROLL_GRID])
@pytest.mark.parametrize("kind, nonlinearity", [("RNN", "tanh"), ("RNN", "relu"), ("LSTM", None), ("GRU", None)])
def test_parity_float64_unroll_grid(kind, nonlinearity, unroll, length, parity_log):
    config = {"input_size": 1, "hidden_size": 5, "num_layers": 1, "bias": False, "batch_first": False}
    config.update({"bidirectional": True, "unroll": unroll, "hoist_input_projection": False})
    config.update({"fused_backward": False, "cpu_kernel": "never"})
    if kind == "RNN":
        config["nonlinearity"] = nonlinearity
    if kind == "LSTM":
        config["proj_size"] = 0
    case = {"kind": kind, "config": config, "length": length, "batch": 4, "lengths": None, "given_h0": False}
    with jax.enable_x64(True):
        check_case({**case, "seed": 7}, "float64", parity_log, ("functional",))


KERNEL_CASES = [  # through the CPU kernel, forced on (hidden 5 and 37: zero-padded units inside; 64: wide backward)
    {"hidden_size": 16, "num_layers": 1, "bidirectional": False, "batch": 7, "lengths": None, "given_h0": True},
    {
        "hidden_size": 32,
        "num_layers": 2,
        "bidirectional": True,
        "batch": 5,
        "lengths": [6, 1, 3, 6, 2],
        "given_h0": False,
    },
    {"hidden_size": 48, "num_layers": 2, "bidirectional": False, "batch": 1, "lengths": None, "given_h0": True},
    {"hidden_size": 16, "num_layers": 1, "bidirectional": True, "batch": None, "lengths": None, "given_h0": True},
    {
        "hidden_size": 32,
        "num_layers": 1,
        "bidirectional": False,
        "batch": 13,
        "lengths": [6] * 12 + [1],
        "given_h0": True,
    },
    {"hidden_size": 5, "num_layers": 2, "bidirectional": True, "batch": 3, "lengths": [6, 2, 4], "given_h0": True},
    {"hidden_size": 37, "num_layers": 1, "bidirectional": False, "batch": 1, "lengths": None, "given_h0": False},
    {
        "hidden_size": 64,
        "num_layers": 2,
        "bidirectional": True,
        "batch": 7,
        "lengths": [6, 5, 1, 6, 3, 2, 6],
        "given_h0": True,
    },
]


@pytest.mark.skipif(jaxrnn.kernels.cpu.unavailable_reason() is not None, reason="jaxrnn's CPU kernel cannot run here")
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: f"h{c['hidden_size']}-l{c['num_layers']}-b{c['batch']}")
def test_parity_cpu_kernel(kind, case, parity_log):
    config = {"input_size": 5, "bias": case["hidden_size"] != 48, "batch_first": False, "cpu_kernel": "always"}
    config.update({k: case[k] for k in ("hidden_size", "num_layers", "bidirectional")})
    if kind == "LSTM":
        config["proj_size"] = 0
    if kind == "RNN":
        config["nonlinearity"] = "relu" if case["hidden_size"] % 2 else "tanh"
    full = {"kind": kind, "config": config, "length": 6, "seed": case["hidden_size"] + case["num_layers"]}
    full.update({k: case[k] for k in ("batch", "lengths", "given_h0")})
    check_case(full, "float32", parity_log)


# Realistic sizes through the kernel: hidden 64-512, 50-300 steps, batch up to 64, with lengths; the
# backward's 8-step ring wraps many times and the blocks are full (or padded: hidden 100).
REALISTIC_CASES = [
    {"hidden_size": 64, "num_layers": 2, "bidirectional": True, "batch": 16, "length": 50, "input_size": 32},
    {"hidden_size": 128, "num_layers": 1, "bidirectional": False, "batch": 64, "length": 120, "input_size": 64},
    {"hidden_size": 100, "num_layers": 1, "bidirectional": True, "batch": 24, "length": 80, "input_size": 20},
    {"hidden_size": 512, "num_layers": 1, "bidirectional": False, "batch": 8, "length": 300, "input_size": 128},
]


@pytest.mark.skipif(jaxrnn.kernels.cpu.unavailable_reason() is not None, reason="jaxrnn's CPU kernel cannot run here")
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize(
    "case", REALISTIC_CASES, ids=lambda c: f"h{c['hidden_size']}-t{c['length']}-b{c['batch']}-l{c['num_layers']}"
)
def test_parity_cpu_kernel_realistic_sizes(kind, case, parity_log):
    rng = np.random.default_rng(case["hidden_size"])
    lengths = rng.integers(1, case["length"] + 1, case["batch"]).tolist()
    lengths[0] = case["length"]
    config = {"bias": True, "batch_first": False, "cpu_kernel": "always"}
    config.update({k: case[k] for k in ("input_size", "hidden_size", "num_layers", "bidirectional")})
    if kind == "LSTM":
        config["proj_size"] = 0
    if kind == "RNN":
        config["nonlinearity"] = "tanh" if case["hidden_size"] != 128 else "relu"
    full = {"kind": kind, "config": config, "length": case["length"], "seed": case["hidden_size"]}
    full.update({"batch": case["batch"], "lengths": lengths, "given_h0": True})
    check_case(full, "float32", parity_log)
