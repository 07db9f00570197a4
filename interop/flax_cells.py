"""Flax's own recurrent cells seen in torch's layout, so one state_dict fits both.

:func:`interop.load_state_dict` and :func:`interop.to_state_dict` use this to
move weights between ``torch.nn.LSTM``/``GRU``/``RNN`` (or their cells) and
Flax's ``nn.LSTMCell``, ``nn.OptimizedLSTMCell``, ``nn.GRUCell``,
``nn.SimpleCell`` and the NNX ones of the same names, driven by ``nn.RNN``,
``nnx.RNN``, ``nn.Bidirectional``/``nnx.Bidirectional`` or ``nn.scan``.

Where Flax keeps torch's weights (torch gate order: LSTM i, f, g, o; GRU r, z, n)::

    cell                     input side               hidden side              biases
    nn.LSTMCell,             ii if ig io:             hi hf hg ho:             h*.bias = b_ih + b_hh
      nn.OptimizedLSTMCell     kernel (I, H)            kernel (H, H)
    nnx.LSTMCell             ii if_ ig io             hi hf hg ho              h*.bias = b_ih + b_hh
    nnx.OptimizedLSTMCell    dense_i: (I, 4H)         dense_h: (H, 4H)         dense_h.bias = b_ih + b_hh
    nn.GRUCell               ir iz in: (I, H)         hr hz hn: (H, H)         ir/iz.bias = b_i* + b_h*,
                                                                               in.bias = b_in, hn.bias = b_hn
    nnx.GRUCell              dense_i: (I, 3H)         dense_h: (H, 3H)         dense_i.bias = [b_ir + b_hr,
                                                                               b_iz + b_hz, b_in]; no b_hn
    nn.SimpleCell            i: (I, H)                h: (H, H)                i.bias = b_ih + b_hh
    nnx.SimpleCell           dense_i: (I, H)          dense_h: (H, H)          dense_i.bias = b_ih + b_hh

Every kernel is torch's weight block transposed. Where Flax has one bias per
gate, it holds ``b_ih + b_hh`` (only their sum reaches the gate); exported,
the sum goes to ``bias_ih`` and ``bias_hh`` is zero there. ``nnx.GRUCell``
has no slot for ``b_hn`` (torch multiplies it by the reset gate), so a
nonzero ``b_hn`` cannot be loaded into it; a zero one loads.

Which torch layer a cell stands for is read from its parameter path:

    Flax parameter path of the cell           torch keys
    ('lstm', 'cell')                          lstm.weight_ih_l0, ...  (nn.RNN/nnx.RNN keep their cell as 'cell')
    ('lstm', 'forward_rnn', 'cell')           lstm.weight_ih_l0, ...  (Bidirectional's forward RNN)
    ('lstm', 'backward_rnn', 'cell')          lstm.weight_ih_l0_reverse, ...
    ('lstm_l1', 'cell')                       lstm.weight_ih_l1, ...  (a stack: the layer from an _l{k} suffix)
    ('encoder', 'lstm', 'cell')               encoder.lstm.weight_ih_l0, ...
    ('lstm',)  (a cell named 'lstm')          lstm.weight_ih_l0, ...; loads an nn.LSTMCell's lstm.weight_ih too

A cell is recognised by its parameter names and shapes (the table above), so
it is found whether Flax's ``nn.RNN``, ``nn.scan`` or a Python loop drives
it. In a linen ``@compact`` method, a cell created there belongs to that
method's module, not to the ``nn.RNN`` it is passed to: its path is its own
name (``LSTMCell_0`` unless named), so name it like the torch attribute,
``nn.RNN(nn.LSTMCell(H, name='lstm'))``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.params import layer_shapes

_TORCH_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_LAYER_SUFFIX = re.compile(r"^(?P<name>.*)_l(?P<layer>\d+)$")
_JAXRNN = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
_GATES = {"lstm": "ifgo", "gru": "rzn", "rnn": "h"}


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one Flax cell class keeps torch's weights.

    ``inputs``/``hiddens`` name the ``Dense``/``Linear`` submodules of the input
    and hidden side: one per gate (in torch's gate order), or one for all gates
    fused along the output axis. ``input_bias``/``hidden_bias`` say, per gate,
    whether that side has a bias.
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    hiddens: tuple[str, ...]
    input_bias: tuple[bool, ...]
    hidden_bias: tuple[bool, ...]

    @property
    def num_gates(self) -> int:
        return len(self.input_bias)

    def leaves(self) -> frozenset[tuple[str, str]]:
        """The ``(submodule, leaf)`` pairs under the cell's path."""
        out = set()
        for names, biases in ((self.inputs, self.input_bias), (self.hiddens, self.hidden_bias)):
            for g, name in enumerate(names):
                out.add((name, "kernel"))
                gates = range(self.num_gates) if len(names) == 1 else (g,)
                if any(biases[k] for k in gates):
                    out.add((name, "bias"))
        return frozenset(out)

    def separate(self, gate: int) -> bool:
        """Whether torch's two biases of ``gate`` act separately (GRU's n: ``b_hn`` is scaled by the reset gate)."""
        return self.kind == "gru" and gate == 2


def _per_gate(kind: str, inputs: str, hiddens: str, input_bias: str, hidden_bias: str, name: str) -> Layout:
    return Layout(name, kind, tuple(inputs.split()), tuple(hiddens.split()), _flags(input_bias), _flags(hidden_bias))


def _flags(text: str) -> tuple[bool, ...]:
    return tuple(c == "1" for c in text)


# Fused layouts with the same parameter names (nnx.GRUCell, nnx.SimpleCell) differ in the number of gates,
# which the hidden kernel's shape (H, gates * H) tells.
LAYOUTS = (
    _per_gate("lstm", "ii if ig io", "hi hf hg ho", "0000", "1111", "nn.LSTMCell / nn.OptimizedLSTMCell"),
    _per_gate("lstm", "ii if_ ig io", "hi hf hg ho", "0000", "1111", "nnx.LSTMCell"),
    _per_gate("lstm", "dense_i", "dense_h", "0000", "1111", "nnx.OptimizedLSTMCell"),
    _per_gate("gru", "ir iz in", "hr hz hn", "111", "001", "nn.GRUCell"),
    _per_gate("gru", "dense_i", "dense_h", "111", "000", "nnx.GRUCell"),
    _per_gate("rnn", "i", "h", "1", "0", "nn.SimpleCell"),
    _per_gate("rnn", "dense_i", "dense_h", "1", "0", "nnx.SimpleCell"),
)


@dataclasses.dataclass(frozen=True)
class FlaxCell:
    """One Flax cell found in a parameter tree, and the torch layer-direction it stands for."""

    path: tuple
    layout: Layout
    torch_path: tuple
    layer: int
    reverse: bool
    input_size: int
    hidden_size: int

    @property
    def suffix(self) -> str:
        return f"_l{self.layer}" + ("_reverse" if self.reverse else "")

    def flax_paths(self) -> list[tuple]:
        return [(*self.path, *leaf) for leaf in sorted(self.layout.leaves())]

    def torch_path_of(self, name: str) -> tuple:
        """The parameter path whose torch key is the torch layer's ``name`` (``'weight_ih'``) with its suffix."""
        return (*self.torch_path, name + self.suffix)

    def torch_shapes(self) -> dict[str, tuple[int, ...]]:
        return layer_shapes(self.layout.num_gates, self.input_size, self.hidden_size, bias=True, suffix=self.suffix)

    def describe(self) -> str:
        where = repr("/".join(map(str, self.path))) if self.path else "the root"
        return f"{self.layout.name} at {where}"


def find(params: Mapping[tuple, Any]) -> list[FlaxCell]:
    """The Flax cells in a flat ``{path: array or ShapeDtypeStruct}`` parameter tree, each with its torch name.

    Raises:
      ValueError: two cells stand for the same torch layer-direction.
    """
    groups: dict[tuple, dict[tuple[str, str], Any]] = {}
    for path, value in params.items():
        if len(path) >= 2:
            groups.setdefault(tuple(path[:-2]), {})[tuple(map(str, path[-2:]))] = value
    cells, seen = [], {}
    for path, leaves in groups.items():
        layout = _layout_of(leaves)
        if layout is None:
            continue
        cell = _place(path, layout, leaves)
        key = (cell.torch_path, cell.suffix)
        if key in seen:
            raise ValueError(
                f"{seen[key].describe()} and {cell.describe()} both stand for the torch keys "
                f"{'.'.join(map(str, (*cell.torch_path, 'weight_ih' + cell.suffix)))}...; rename one "
                "(the torch layer's number comes from an _l{k} suffix, its direction from forward_rnn/backward_rnn)."
            )
        seen[key] = cell
        cells.append(cell)
    return cells


def _layout_of(leaves: Mapping[tuple[str, str], Any]) -> Layout | None:
    names = frozenset(leaves)
    for layout in LAYOUTS:
        if layout.leaves() != names:
            continue
        hidden_kernel = np.shape(leaves[(layout.hiddens[0], "kernel")])
        if len(hidden_kernel) != 2:
            continue
        fused_width = hidden_kernel[0] * (layout.num_gates if len(layout.hiddens) == 1 else 1)
        if hidden_kernel[1] == fused_width:
            return layout
    return None


def _place(path: tuple, layout: Layout, leaves: Mapping[tuple[str, str], Any]) -> FlaxCell:
    """Where the cell at ``path`` goes in torch: drop nn.RNN's ``cell``, read Bidirectional's direction and an
    ``_l{k}`` layer suffix."""
    rest = list(path)
    if rest and rest[-1] == "cell":
        rest.pop()
    reverse = False
    if rest and rest[-1] in ("forward_rnn", "backward_rnn"):
        reverse = rest.pop() == "backward_rnn"
    layer = 0
    if rest:
        found = _LAYER_SUFFIX.match(str(rest[-1]))
        if found is not None and found["name"]:
            rest[-1], layer = found["name"], int(found["layer"])
    input_size = int(np.shape(leaves[(layout.inputs[0], "kernel")])[0])
    hidden_size = int(np.shape(leaves[(layout.hiddens[0], "kernel")])[0])
    return FlaxCell(tuple(path), layout, tuple(rest), layer, reverse, input_size, hidden_size)


def torch_view(params: Mapping[tuple, Any], cells: Iterable[FlaxCell]) -> dict[tuple, Any]:
    """``params`` (``ShapeDtypeStruct``s) with each cell's leaves replaced by its torch layer's
    (``weight_ih_l0``, ...), in torch's shapes, each in the dtype of the Flax kernel or bias it feeds."""
    cells = list(cells)
    view = _without(params, cells)
    for cell in cells:
        kernel = params[(*cell.path, cell.layout.inputs[0], "kernel")]
        bias = next(params[p] for p in cell.flax_paths() if p[-1] == "bias")
        for key, shape in cell.torch_shapes().items():
            dtype = bias.dtype if key.startswith("bias") else kernel.dtype
            view[(*cell.torch_path, key)] = jax.ShapeDtypeStruct(shape, dtype)
    return view


def _without(params: Mapping[tuple, Any], cells: list[FlaxCell]) -> dict[tuple, Any]:
    drop = {p for cell in cells for p in cell.flax_paths()}
    return {p: v for p, v in params.items() if p not in drop}


def to_torch(params: Mapping[tuple, Any], cells: Iterable[FlaxCell]) -> dict[tuple, Any]:
    """Flat params with each cell's leaves replaced by torch's four arrays (numpy), under the torch view's paths.

    A torch layer's arrays come out in torch's order (``_l0``, ``_l0_reverse``, ``_l1``, ...) where its first
    cell's leaves were.
    """
    layers: dict[tuple, list[FlaxCell]] = {}
    for cell in cells:
        layers.setdefault(cell.torch_path, []).append(cell)
    where = {p: cell.torch_path for group in layers.values() for cell in group for p in cell.flax_paths()}
    out: dict[tuple, Any] = {}
    for path, value in params.items():
        if path not in where:
            out[path] = value
        elif (layer := layers.pop(where[path], None)) is not None:
            for cell in sorted(layer, key=lambda c: (c.layer, c.reverse)):
                leaves = {p[len(cell.path) :]: np.asarray(params[p]) for p in cell.flax_paths()}
                out.update(_cell_to_torch(cell, leaves))
    return out


def _cell_to_torch(cell: FlaxCell, leaves: Mapping[tuple, np.ndarray]) -> dict[tuple, np.ndarray]:
    layout, h = cell.layout, cell.hidden_size

    def side(names: tuple[str, ...], has_bias: tuple[bool, ...]) -> tuple[np.ndarray, np.ndarray]:
        kernel = np.concatenate([leaves[(n, "kernel")] for n in names], axis=1).T  # (gates * H, in)
        biases = []
        for g in range(layout.num_gates):
            name, col = (names[0], slice(g * h, (g + 1) * h)) if len(names) == 1 else (names[g], slice(None))
            biases.append(leaves[(name, "bias")][col] if has_bias[g] else np.zeros(h, kernel.dtype))
        return np.ascontiguousarray(kernel), np.concatenate(biases)

    weight_ih, bias_ih = side(layout.inputs, layout.input_bias)
    weight_hh, bias_hh = side(layout.hiddens, layout.hidden_bias)
    arrays = {"weight_ih": weight_ih, "weight_hh": weight_hh, "bias_ih": bias_ih, "bias_hh": bias_hh}
    return {cell.torch_path_of(name): value for name, value in arrays.items()}


def from_torch(
    flat: Mapping[tuple, Any], cells: Iterable[FlaxCell], dtypes: Mapping[tuple, Any], key_of: Callable[[tuple], str]
) -> tuple[dict[tuple, Any], list[tuple[str, str]]]:
    """The inverse of :func:`to_torch`: torch-view arrays -> each cell's Flax leaves (in ``dtypes[path]``).

    Returns ``(params, lost)``: ``lost`` lists ``(torch key, what is lost)`` for
    weights the Flax cell cannot hold (a nonzero ``b_hn`` in ``nnx.GRUCell``);
    ``key_of`` names a torch-view path's key for that message.
    """
    cells = list(cells)
    torch_paths = {cell.torch_path_of(name) for cell in cells for name in _TORCH_NAMES}
    out = {p: v for p, v in flat.items() if p not in torch_paths}
    lost: list[tuple[str, str]] = []
    for cell in cells:
        arrays = {name: np.asarray(flat[cell.torch_path_of(name)]) for name in _TORCH_NAMES}
        leaves, cell_lost = _cell_from_torch(cell, arrays)
        lost += [(key_of(cell.torch_path_of(name)), why) for name, why in cell_lost]
        for leaf, value in leaves.items():
            path = (*cell.path, *leaf)
            out[path] = jnp.asarray(value, dtype=dtypes[path])
    return out, sorted(lost)


def _cell_from_torch(cell: FlaxCell, arrays: Mapping[str, np.ndarray]) -> tuple[dict, list[tuple[str, str]]]:
    layout, h = cell.layout, cell.hidden_size
    block = [slice(g * h, (g + 1) * h) for g in range(layout.num_gates)]
    # Per gate, the bias each side's Flax slot gets (None: that side has no slot).
    slots: dict[str, list[np.ndarray | None]] = {"i": [], "h": []}
    lost = []
    for g, b in enumerate(block):
        b_i, b_h = arrays["bias_ih"][b], arrays["bias_hh"][b]
        has_i, has_h = layout.input_bias[g], layout.hidden_bias[g]
        if has_i != has_h:  # one slot: it holds the sum, or, where the two act apart, the other must be zero
            dropped, name = (b_h, "bias_hh") if has_i else (b_i, "bias_ih")
            if layout.separate(g) and np.any(dropped != 0):
                lost.append((name, _lost_message(cell, g)))
            if layout.separate(g):
                b_i = b_h = b_i if has_i else b_h
            else:
                b_i = b_h = b_i + b_h
        slots["i"].append(b_i if has_i else None)
        slots["h"].append(b_h if has_h else None)
    leaves: dict[tuple, np.ndarray] = {}
    for names, weight, side in ((layout.inputs, arrays["weight_ih"], "i"), (layout.hiddens, arrays["weight_hh"], "h")):
        if len(names) == 1:  # fused: one kernel (in, gates * H) and one bias (gates * H,) if any
            leaves[(names[0], "kernel")] = weight.T
            if any(s is not None for s in slots[side]):
                leaves[(names[0], "bias")] = np.concatenate(slots[side])
            continue
        for name, b, bias in zip(names, block, slots[side]):
            leaves[(name, "kernel")] = weight[b].T
            if bias is not None:
                leaves[(name, "bias")] = bias
    return leaves, lost


def _lost_message(cell: FlaxCell, gate: int) -> str:
    gate_name = _GATES[cell.layout.kind][gate]
    return (
        f"its {gate_name}-gate part (torch's b_h{gate_name}, multiplied by the reset gate) is nonzero, and "
        f"{cell.describe()} has no parameter for it, so loading it would change the outputs; use "
        f"{_jaxrnn_layers(cell)}, which hold torch's weights as they are"
    )


def _jaxrnn_layers(cell: FlaxCell) -> str:
    name = _JAXRNN[cell.layout.kind]
    return f"jaxrnn.{name}, jaxrnn.nnx.{name} or jaxrnn.functional.{name.lower()}"


def check_functions(cells: Iterable[FlaxCell], modules: Mapping[tuple, Any]) -> None:
    """Raises ValueError if a cell computes something torch's layer does not: a ``gate_fn``/``activation_fn``
    other than torch's (sigmoid and tanh; tanh or relu for ``SimpleCell``), or ``SimpleCell(residual=True)``.

    ``modules`` maps a cell's path to the cell module (linen or NNX); cells not in it are not checked.
    """
    for cell in cells:
        module = modules.get(cell.path)
        if module is None:
            continue
        if cell.layout.kind == "rnn":
            wrong = [] if getattr(module, "activation_fn", None) in (jnp.tanh, jax.nn.relu) else ["activation_fn"]
            wrong += ["residual"] if getattr(module, "residual", False) else []
            torch_has = "tanh or relu (nonlinearity=), no residual connection"
        else:
            wrong = [] if getattr(module, "gate_fn", None) is jax.nn.sigmoid else ["gate_fn"]
            wrong += [] if getattr(module, "activation_fn", None) is jnp.tanh else ["activation_fn"]
            torch_has = "sigmoid gates and tanh"
        if wrong:
            got = ", ".join(f"{name}={_name_of(getattr(module, name))}" for name in wrong)
            raise ValueError(
                f"{cell.describe()} has {got}, but torch's {_JAXRNN[cell.layout.kind]} computes {torch_has}: torch's "
                "weights would give other outputs in it. Build the cell with Flax's defaults"
                + (" (activation_fn=nn.relu for nonlinearity='relu')" if cell.layout.kind == "rnn" else "")
                + "."
            )


def _name_of(value: Any) -> str:
    return getattr(value, "__name__", None) or repr(value)


def hints(
    cells: Iterable[FlaxCell],
    missing: Iterable[str],
    unexpected: Iterable[str],
    key_of: Callable[[tuple], str],
) -> list[str]:
    """What a failed load into Flax cells most likely means, in words: a torch layer built with ``bias=False``,
    with ``proj_size``, with more layers or directions than the Flax model, or a cell Flax named itself."""
    missing, unexpected = set(missing), list(unexpected)
    out = []
    for cell in cells:
        base = key_of((*cell.torch_path, ""))
        which = f"{cell.describe()} (torch keys {base}*{cell.suffix})"
        jaxrnn_layer = f"jaxrnn.{_JAXRNN[cell.layout.kind]}"
        keys = {name: key_of(cell.torch_path_of(name)) for name in _TORCH_NAMES}
        if {keys["bias_ih"], keys["bias_hh"]} <= missing and not {keys["weight_ih"], keys["weight_hh"]} & missing:
            out.append(
                f"the torch layer of {which} has no biases (bias=False), but Flax's cell always adds one; "
                f"use {jaxrnn_layer}(..., bias=False)."
            )
        projection = base + "weight_hr" + cell.suffix
        if projection in unexpected:
            out.append(
                f"the torch layer of {which} projects its output ({projection}: proj_size), which Flax's cell "
                f"cannot; use {jaxrnn_layer}(..., proj_size=...)."
            )
        if auto_named(cell):
            out.append(
                f"Flax named {cell.describe()} itself (a cell created in a @compact method belongs to that "
                "module, not to the nn.RNN it drives): name it like the torch attribute, "
                "e.g. nn.RNN(nn.LSTMCell(H, name='lstm'))."
            )
    others = sorted(k for k in unexpected if (m := _LAYER_KEY.match(k)) and (m["index"] != "0" or m["reverse"]))
    if others and cells:
        out.append(
            f"the state_dict has more layers or directions than the Flax model ({', '.join(others[:4])}): "
            "Flax cells stand for torch layer k when their nn.RNN's name ends in _l{k} (lstm_l1 -> lstm.*_l1), and "
            "for the reverse direction as nn.Bidirectional's backward_rnn."
        )
    return out


_LAYER_KEY = re.compile(r"^.*(?:weight|bias)_(?:ih|hh|hr)_l(?P<index>\d+)(?P<reverse>_reverse)?$")


def auto_named(cell: FlaxCell) -> bool:
    """Whether the cell's name is one Flax made up (``LSTMCell_0``), i.e. the user never named it."""
    return bool(cell.path) and re.fullmatch(r"(LSTM|OptimizedLSTM|GRU|Simple)Cell_\d+", str(cell.path[-1])) is not None
