"""Data parallelism on JAX's own SPMD machinery: a ``data`` mesh axis, sharded batches, replicated parameters.

One code path for one device, many devices and many hosts: the batch (the
TBPTT streams) is split along the mesh's ``data`` axis, parameters and
optimizer state are replicated, and ``jax.jit`` with these shardings lets the
compiler insert the all-reduce that averages gradients. A single device is a
mesh of one. For several hosts call :func:`initialize_distributed` first; each
process then supplies its own slice of the streams (:func:`global_batch`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

#: The name of the mesh axis that batches are split along.
DATA_AXIS = "data"

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "check_batch_sizes",
    "check_divisible",
    "data_mesh",
    "global_batch",
    "initialize_distributed",
    "process_slice",
    "replicated",
    "state_sharding",
]


def initialize_distributed(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """``jax.distributed.initialize`` from the arguments, else from the environment.

    The variables are ``JAXRNN_COORDINATOR`` (host:port), ``JAXRNN_NUM_PROCESSES``
    and ``JAXRNN_PROCESS_ID``.

    Does nothing when neither the arguments nor the environment ask for more
    than one process. On CPU, collectives across processes use gloo.
    """
    coordinator_address = coordinator_address or os.environ.get("JAXRNN_COORDINATOR")
    num_processes = num_processes or int(os.environ.get("JAXRNN_NUM_PROCESSES", "1"))
    if process_id is None and "JAXRNN_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAXRNN_PROCESS_ID"])
    if num_processes <= 1:
        return
    if coordinator_address is None or process_id is None:
        raise ValueError("multi-process training needs a coordinator address and this process's id.")
    # CPU devices talk across processes through gloo (no effect on GPU/TPU). Set before
    # initialisation: asking which backend is in use would already start it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)


def data_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh named ``data`` over the first ``num_devices`` devices (all of them by default, across hosts)."""
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ValueError(f"num_devices must be in [1, {len(devices)}] (the devices JAX sees), got {num_devices}.")
    return Mesh(np.array(devices[:num_devices]), (DATA_AXIS,))


def check_divisible(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """Raises ``ValueError`` naming ``what`` unless ``batch_size`` splits evenly over the mesh's ``data`` axis."""
    n = mesh.shape[DATA_AXIS]
    if batch_size % n:
        raise ValueError(f"{what}={batch_size} does not divide evenly over {n} devices; use a multiple of {n}.")


def check_batch_sizes(num_devices: int | None, **sizes: int) -> Mesh:
    """The ``data`` mesh for ``num_devices``, after checking that every named batch size divides over it."""
    mesh = data_mesh(num_devices)
    for name, size in sizes.items():
        check_divisible(size, mesh, name)
    return mesh


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a whole copy on every device of ``mesh`` (parameters, optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int, ndim: int) -> NamedSharding:
    """Sharding that splits axis ``batch_axis`` of an ``ndim``-array over ``data``."""
    spec = [None] * ndim
    spec[batch_axis] = DATA_AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))


def state_sharding(mesh: Mesh, state: Any) -> Any:
    """Shardings for a recurrent state (``(D*num_layers, N, H)`` leaves): split along N."""
    return jax.tree.map(lambda leaf: batch_sharding(mesh, 1, leaf.ndim), state)


def global_batch(mesh: Mesh, local: np.ndarray, batch_axis: int = 0) -> jax.Array:
    """This process's slice of a batch -> the global array, sharded over ``data``.

    With one process ``local`` is the whole batch. With several, process ``p``
    passes rows ``[p*B/P, (p+1)*B/P)`` of the global batch of ``B``.
    """
    sharding = batch_sharding(mesh, batch_axis, np.ndim(local))
    return jax.make_array_from_process_local_data(sharding, np.asarray(local))


def process_slice(batch_size: int) -> slice:
    """The rows of a global batch of ``batch_size`` that this process reads."""
    per_process = batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)
