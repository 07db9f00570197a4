"""jaxrnn: PyTorch's RNN, LSTM and GRU as Flax modules, scanned under jit.

>>> import jax, jax.numpy as jnp, jaxrnn
>>> rnn = jaxrnn.LSTM(input_size=4, hidden_size=8, num_layers=2, batch_first=True)
>>> x = jnp.ones((3, 5, 4))                       # (N, L, H_in)
>>> variables = rnn.init(jax.random.key(0), x)
>>> output, (h_n, c_n) = rnn.apply(variables, x)
>>> output.shape, h_n.shape, c_n.shape
((3, 5, 8), (2, 3, 8), (2, 3, 8))
"""

from jaxrnn.cells import GRUCell, LSTMCell, RNNCell
from jaxrnn.padding import lengths_to_mask, pad_sequence
from jaxrnn.recurrence import Recurrence
from jaxrnn.rnn import GRU, LSTM, RNN

__all__ = [
    "GRU",
    "GRUCell",
    "LSTM",
    "LSTMCell",
    "RNN",
    "RNNCell",
    "Recurrence",
    "lengths_to_mask",
    "pad_sequence",
]
__version__ = "0.1.0"
