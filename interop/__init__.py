"""The torch bridge: the only part of jaxrnn that touches torch.

* :func:`from_torch` / :func:`to_torch`: one ``nn.RNN``/``nn.LSTM``/``nn.GRU``
  (or cell) to jaxrnn and back, bit for bit.
* :func:`load_state_dict` / :func:`to_state_dict`: whole models (jaxrnn layers,
  ``nn.Dense`` <-> ``nn.Linear``, ``nn.Embed`` <-> ``nn.Embedding``) by key.
* :func:`load_state_dict` / :func:`to_state_dict` also move torch's weights into
  Flax's own ``nn.LSTMCell``/``OptimizedLSTMCell``/``GRUCell``/``SimpleCell``
  (linen and NNX) and back (:mod:`interop.flax_cells`).
* :func:`load_state_dict` / :func:`to_state_dict` also map keys: ``rename=``,
  tied weights (``tied=``), wrapper prefixes (``module.``, ``model.``) and
  ``nn.LSTMCell`` keys into one-layer layers (:mod:`interop.keys`).
* :func:`read_checkpoint` / :func:`load_checkpoint`: the model's tensors from
  any torch container (``torch.save`` state dicts, training-checkpoint dicts
  with metadata, whole pickled models, Lightning ``.ckpt``, TorchScript,
  ``torch.export`` ``.pt2``) or safetensors, format read from the bytes,
  without running code from the file; damaged files get a
  :class:`CheckpointError` that names the cause.
* ``python -m interop.check CHECKPOINT``: run a checkpoint in both frameworks
  and print the largest differences.
* ``python -m interop.convert IN OUT``: any of those files to ``.safetensors``.

torch is imported lazily, inside the functions that need it: loading a
``.safetensors`` file or a numpy state_dict works without torch installed.
"""

from interop.checkpoint import Checkpoint, load_checkpoint, read_checkpoint
from interop.formats import CheckpointError
from interop.keys import cell_keys
from interop.modules import from_torch, to_torch
from interop.parity import find_recurrent_layers, max_abs_diffs, torch_forward
from interop.state_dict import NarrowingWarning, StateDictError, load_state_dict, to_state_dict

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "cell_keys",
    "NarrowingWarning",
    "StateDictError",
    "find_recurrent_layers",
    "from_torch",
    "load_checkpoint",
    "load_state_dict",
    "read_checkpoint",
    "max_abs_diffs",
    "to_state_dict",
    "to_torch",
    "torch_forward",
]
