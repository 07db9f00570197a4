"""jaxrnn: PyTorch's RNN, LSTM and GRU for JAX: Flax linen modules, Flax NNX modules and plain functions.

>>> import jax, jax.numpy as jnp, jaxrnn
>>> rnn = jaxrnn.LSTM(input_size=4, hidden_size=8, num_layers=2, batch_first=True)
>>> x = jnp.ones((3, 5, 4))                       # (N, L, H_in)
>>> variables = rnn.init(jax.random.key(0), x)
>>> output, (h_n, c_n) = rnn.apply(variables, x)
>>> output.shape, h_n.shape, c_n.shape
((3, 5, 8), (2, 3, 8), (2, 3, 8))
>>> output2, _ = jaxrnn.functional.lstm(variables["params"], x, batch_first=True)  # the same function

Flax NNX: ``jaxrnn.nnx.LSTM(4, 8, 2, batch_first=True, rngs=nnx.Rngs(0))`` (:mod:`jaxrnn.nnx`).
"""

import importlib.metadata

from jaxrnn import functional, init
from jaxrnn.cells import FlaxGRUCell, FlaxLSTMCell, FlaxRNNCell, GRUCell, LSTMCell, RNNCell
from jaxrnn.data import Vocab, bptt_batches, contiguous_streams, num_bptt_batches, sliding_windows
from jaxrnn.generate import generate
from jaxrnn.inspect import step_states
from jaxrnn.models import Classifier, SequenceModel, Tagger, recurrent_layer
from jaxrnn.packing import PackedSequence, pack_padded_sequence, pack_sequence, pad_packed_sequence
from jaxrnn.padding import lengths_to_mask, pad_sequence
from jaxrnn.rnn import GRU, LSTM, RNN
from jaxrnn.seq2seq import Seq2Seq, beam_search, greedy_decode
from jaxrnn.train import (
    TrainState,
    accuracy,
    bits_per_char,
    cross_entropy_loss,
    fit,
    init_train_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
    masked_cross_entropy,
    perplexity,
    train_update,
)

__all__ = [
    "GRU",
    "GRUCell",
    "FlaxGRUCell",
    "FlaxLSTMCell",
    "FlaxRNNCell",
    "LSTM",
    "LSTMCell",
    "RNN",
    "RNNCell",
    "functional",
    "init",
    "lengths_to_mask",
    "pad_sequence",
    "PackedSequence",
    "pack_padded_sequence",
    "pad_packed_sequence",
    "pack_sequence",
    # models, data, training, generation
    "Classifier",
    "Seq2Seq",
    "beam_search",
    "greedy_decode",
    "SequenceModel",
    "Tagger",
    "recurrent_layer",
    "Vocab",
    "bptt_batches",
    "contiguous_streams",
    "num_bptt_batches",
    "sliding_windows",
    "TrainState",
    "accuracy",
    "bits_per_char",
    "cross_entropy_loss",
    "fit",
    "generate",
    "step_states",
    "init_train_state",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "masked_cross_entropy",
    "perplexity",
    "train_update",
]


def __getattr__(name: str):
    """``jaxrnn.nnx`` after a plain ``import jaxrnn``: imported on first use, since Flax NNX takes about a second to
    import and linen users never need it."""
    if name == "nnx":
        import jaxrnn.nnx

        return jaxrnn.nnx
    raise AttributeError(f"module 'jaxrnn' has no attribute {name!r}")


try:  # the one version source is pyproject.toml, read back from the installed package's metadata
    __version__ = importlib.metadata.version("jaxrnn")
except importlib.metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
