"""A port nobody here wrote: pytorch/examples ``time_sequence_prediction``, float64, into jaxrnn cells under nn.scan.

Upstream's ``train.py`` is kept byte for byte in ``tests/upstream_time_sequence_prediction/`` (pytorch/examples at
77f55b9, BSD-3-Clause; its ``Sequence`` is two ``nn.LSTMCell(1, 51)``/``(51, 51)`` and an ``nn.Linear(51, 1)``,
run in float64, with a free-running ``future`` loop that feeds each prediction back in). Here: upstream's data recipe
(``generate_sine_wave.py``, smaller), two steps of upstream's LBFGS training, the whole pickled model saved as
``torch.save(seq)``, read back with ``interop.read_checkpoint`` (no code from the file runs), loaded into the port by
``interop.load_state_dict``, and its predictions compared with upstream's over 1,000 free-running steps.
"""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

import interop
import jaxrnn

UPSTREAM = pathlib.Path(__file__).parent / "upstream_time_sequence_prediction"
FUTURE = 1000
OVER_TIME = {"variable_broadcast": "params", "split_rngs": {"params": False}}  # nn.scan: one set of weights


class Sequence(nn.Module):
    """upstream's ``Sequence`` in jaxrnn: the same submodule names, so the state_dict loads as it is."""

    def setup(self):
        self.lstm1 = jaxrnn.FlaxLSTMCell(1, 51, param_dtype=jnp.float64)
        self.lstm2 = jaxrnn.FlaxLSTMCell(51, 51, param_dtype=jnp.float64)
        self.linear = nn.Dense(1, dtype=jnp.float64, param_dtype=jnp.float64)

    def step(self, carry, x):
        """One time step: ``x`` ``(N, 1)`` -> the next value ``(N, 1)``."""
        first, second = carry
        first, h = self.lstm1(first, x)
        second, h2 = self.lstm2(second, h)
        return (first, second), self.linear(h2)

    def __call__(self, x, future: int = 0):
        """``x`` ``(N, L)`` -> predictions ``(N, L + future)``, as upstream's ``forward(input, future)``."""
        batch = x.shape[0]
        carry = (self.lstm1.initialize_carry(None, (batch, 1)), self.lstm2.initialize_carry(None, (batch, 51)))
        carry, outputs = nn.scan(type(self).step, **OVER_TIME, in_axes=1, out_axes=1)(self, carry, x[..., None])
        if future:

            def free_run(module, state, _):
                carry, output = module.step(*state)
                return (carry, output), output

            free = nn.scan(free_run, **OVER_TIME, length=future, out_axes=1)
            _, more = free(self, (carry, outputs[:, -1]), None)
            outputs = jnp.concatenate([outputs, more], axis=1)
        return outputs[..., 0]


def test_time_sequence_prediction_port_equals_upstream_in_float64(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(UPSTREAM))
    from train import Sequence as UpstreamSequence  # upstream's class, unchanged

    # generate_sine_wave.py's recipe, smaller: N sequences of L steps, T = 20
    rng = np.random.RandomState(2)
    steps, count, period = 200, 8, 20
    x = np.empty((count, steps), "int64")
    x[:] = np.array(range(steps)) + rng.randint(-4 * period, 4 * period, count).reshape(count, 1)
    data = np.sin(x / 1.0 / period).astype("float64")
    train_input, target = torch.from_numpy(data[3:, :-1]), torch.from_numpy(data[3:, 1:])
    test_input = torch.from_numpy(data[:3, :-1])
    # train.py: seed 0, double, MSELoss, LBFGS(lr=0.8), its closure; two steps
    torch.manual_seed(0)
    seq = UpstreamSequence()
    seq.double()
    optimizer = torch.optim.LBFGS(seq.parameters(), lr=0.8)
    for _ in range(2):

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.MSELoss()(seq(train_input), target)
            loss.backward()
            return loss

        optimizer.step(closure)
    with torch.no_grad():
        want = seq(test_input, future=FUTURE).numpy()
    torch.save(seq, tmp_path / "seq.pt")  # the whole pickled model

    checkpoint = interop.read_checkpoint(tmp_path / "seq.pt")
    assert sorted(checkpoint.state_dict) == sorted(seq.state_dict())
    with jax.enable_x64(True):
        port = Sequence()
        variables = interop.load_state_dict(port, checkpoint.state_dict, jnp.zeros((3, 199)))
        run = jax.jit(port.apply, static_argnames="future")
        got = np.asarray(run(variables, jnp.asarray(data[:3, :-1]), future=FUTURE))
    assert got.dtype == np.float64 and got.shape == want.shape == (3, 199 + FUTURE)
    np.testing.assert_allclose(got[:, :199], want[:, :199], rtol=0, atol=1e-12)  # the driven steps
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)  # and 1,000 steps fed on its own predictions
    assert np.abs(want[:, 199:]).max() > 0.1  # the free run predicts something, not a decayed zero
