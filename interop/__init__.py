"""The torch bridge: the only part of jaxrnn that touches torch.

* :func:`from_torch` / :func:`to_torch`: one ``nn.RNN``/``nn.LSTM``/``nn.GRU``
  (or cell) to jaxrnn and back, bit for bit.
* :func:`load_state_dict` / :func:`to_state_dict`: whole models (jaxrnn layers,
  ``nn.Dense`` <-> ``nn.Linear``, ``nn.Embed`` <-> ``nn.Embedding``) by key.
* :func:`load_checkpoint`: ``.pt``/``.pth`` (weights only, never arbitrary
  unpickling) and ``.safetensors`` files as named arrays.
* ``python -m interop.check CHECKPOINT``: run a checkpoint in both frameworks
  and print the largest differences.

torch is imported lazily, inside the functions that need it: loading a
``.safetensors`` file or a numpy state_dict works without torch installed.
"""

from interop.checkpoint import CheckpointError, load_checkpoint
from interop.convert import from_torch, to_torch
from interop.parity import find_recurrent_layers, max_abs_diffs, torch_forward
from interop.state_dict import StateDictError, load_state_dict, to_state_dict

__all__ = [
    "CheckpointError",
    "StateDictError",
    "find_recurrent_layers",
    "from_torch",
    "load_checkpoint",
    "load_state_dict",
    "max_abs_diffs",
    "to_state_dict",
    "to_torch",
    "torch_forward",
]
