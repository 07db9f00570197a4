"""Interpretable cells: which hidden units of a character LSTM track simple properties of the text.

Loads the character model trained by experiments/shakespeare.py (--run, default
runs/shakespeare) or, when there is none, trains a small one here. Runs it over
validation text, records every layer's hidden and cell state at every step
(jaxrnn.step_states), ranks units by the correlation of their activation with
text features, and renders the top units as colour over the characters: an
HTML page and a PNG.

    python experiments/cells.py [--run runs/shakespeare] [--out runs/cells] [--chars 3000]

Features: inside quotes, inside parentheses, position in line, right after a
newline, inside a speaker's name line (e.g. "ROMEO:"), inside a word. A feature
that never varies in the text (tiny-shakespeare has no double quotes and no
parentheses) is reported as absent, not scored.
"""

import argparse
import dataclasses
import html
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

import jaxrnn
from jaxrnn.checkpoint import restore_training_state
from jaxrnn.corpora import load_shakespeare
from jaxrnn.lm import LMConfig, init_params, make_model, train_language_model

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# -- config ----------------------------------------------------------------------------------
SMALL = LMConfig(
    hidden_size=128,
    embedding_size=32,
    optimizer="adam",
    lr=3e-3,
    clip_norm=5.0,
    init_scale=None,
    epochs=1,
    batch_size=32,
    bptt=100,
    eval_batch_size=32,
    max_steps_per_epoch=300,
)
TOP_UNITS = 3


def text_features(text: str) -> dict[str, np.ndarray]:
    """Per-character features, each ``(len(text),)`` float."""
    n = len(text)
    feats = {
        name: np.zeros(n)
        for name in (
            "inside quotes",
            "inside parentheses",
            "position in line",
            "after a newline",
            "speaker name line",
            "inside a word",
        )
    }
    in_quote, depth, column = False, 0, 0
    lines = text.split("\n")
    speaker_line = []
    for line in lines:
        is_speaker = line.endswith(":") and line[:-1].replace(" ", "").isupper() and len(line) > 1
        speaker_line.extend([is_speaker] * (len(line) + 1))
    for i, ch in enumerate(text):
        if ch == '"':
            in_quote = not in_quote
        depth += ch == "("
        feats["inside quotes"][i] = in_quote
        feats["inside parentheses"][i] = depth > 0
        depth -= ch == ")" and depth > 0
        feats["position in line"][i] = column
        feats["after a newline"][i] = i > 0 and text[i - 1] == "\n"
        feats["speaker name line"][i] = speaker_line[i]
        feats["inside a word"][i] = ch.isalpha()
        column = 0 if ch == "\n" else column + 1
    return feats


def load_or_train(run: pathlib.Path, data_dir, out: pathlib.Path, small: LMConfig):
    vocab, train, valid = load_shakespeare(data_dir)
    metrics_path, params_path = run / "metrics.json", run / "params.msgpack"
    if metrics_path.is_file() and params_path.is_file():
        config = LMConfig(**json.loads(metrics_path.read_text())["config"])
        model = make_model(config, len(vocab))
        params = restore_training_state(params_path, init_params(config, model, jax.random.key(0)))
        print(f"loaded the character model from {run} ({config.num_layers}x{config.hidden_size} {config.cell})")
        return vocab, valid, model, params
    print(f"no trained model in {run}: training a small one ({small.max_steps_per_epoch} steps)")
    result = train_language_model(small, len(vocab), train, valid[:20000], None, out / "small-model", unit="char")
    return vocab, valid, result["model"], result["params"]


def activation_color(a: float) -> str:
    """Red for positive, blue for negative, white at zero (activations in [-1, 1])."""
    v = int(255 * (1 - min(abs(a), 1.0)))
    return f"rgb(255,{v},{v})" if a >= 0 else f"rgb({v},{v},255)"


def render_html(text: str, units: list[tuple[str, int, int, float, np.ndarray]], path: pathlib.Path) -> None:
    parts = [
        "<html><meta charset='utf-8'><body style='font-family:monospace'>",
        "<h2>Hidden units of a character LSTM, as colour over the text</h2>",
        "<p>Red: positive activation, blue: negative, white: zero.</p>",
    ]
    for feature, layer, unit, corr, acts in units:
        parts.append(f"<h3>layer {layer} unit {unit}: correlation {corr:+.2f} with '{html.escape(feature)}'</h3><pre>")
        for ch, a in zip(text, acts):
            shown = "&#9166;\n" if ch == "\n" else html.escape(ch)
            parts.append(f"<span style='background:{activation_color(float(a))}'>{shown}</span>")
        parts.append("</pre>")
    parts.append("</body></html>")
    path.write_text("".join(parts))


def render_png(text: str, units, path: pathlib.Path, width: int = 80, rows: int = 12) -> None:
    shown = text[: width * rows]
    fig, axes = plt.subplots(len(units), 1, figsize=(12, 2.6 * len(units)))
    axes = np.atleast_1d(axes)
    for ax, (feature, layer, unit, corr, acts) in zip(axes, units):
        grid = np.full((rows, width), np.nan)
        row = col = 0
        for ch, a in zip(shown, acts):
            if row >= rows:
                break
            grid[row, col] = a
            if ch == "\n":
                ax.text(col, row, "⏎", ha="center", va="center", fontsize=6, family="monospace")
                row, col = row + 1, 0
                continue
            ax.text(col, row, ch, ha="center", va="center", fontsize=6, family="monospace")
            col += 1
            if col == width:
                row, col = row + 1, 0
        ax.imshow(grid, cmap="coolwarm", vmin=-1, vmax=1, aspect="auto")
        ax.set_title(f"layer {layer} unit {unit}: correlation {corr:+.2f} with '{feature}'", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/shakespeare", help="folder of a shakespeare.py run (params.msgpack)")
    p.add_argument("--data-dir")
    p.add_argument("--out", default="runs/cells")
    p.add_argument("--chars", type=int, default=3000, help="validation characters to analyse")
    p.add_argument("--smoke", action="store_true", help="train a tiny model for a few steps")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    small = SMALL
    if args.smoke:
        small = dataclasses.replace(SMALL, hidden_size=16, max_steps_per_epoch=3, batch_size=4, bptt=20)
        args.run, args.chars = str(out / "no-such-run"), 500
    try:
        vocab, valid, model, params = load_or_train(pathlib.Path(args.run), args.data_dir, out, small)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")

    text = vocab.decode(valid[: args.chars])
    ids = jnp.asarray(valid[: args.chars])[None, :]
    embedded = params["embed"]["embedding"][ids]  # (1, L, E): the model's own embedding
    rnn = jaxrnn.recurrent_layer(
        model.cell, hidden_size=model.hidden_size, num_layers=model.num_layers, batch_first=True
    )
    states = jaxrnn.step_states(rnn, {"params": params["rnn"]}, embedded)
    feats = text_features(text)

    ranking = {}
    for kind in [k for k in ("h", "c") if k in states]:
        acts = np.asarray(states[kind][:, 0, :, 0, :])  # (layers, L, H)
        for feature, values in feats.items():
            if values.std() == 0:
                ranking[feature] = "absent from this text"
                continue
            for layer in range(acts.shape[0]):
                a = acts[layer]
                corr = ((a - a.mean(0)) * (values - values.mean())[:, None]).mean(0) / (a.std(0) * values.std() + 1e-12)
                best = int(np.argmax(np.abs(corr)))
                entry = ranking.setdefault(feature, [])
                entry.append({"state": kind, "layer": layer, "unit": best, "correlation": float(corr[best])})
    top = []
    print(f"best unit per feature over {len(text)} validation characters:")
    for feature, entries in ranking.items():
        if isinstance(entries, str):
            print(f"   {feature:20s} {entries}")
            continue
        entries.sort(key=lambda e: -abs(e["correlation"]))
        best = entries[0]
        print(
            f"   {feature:20s} {best['state']} layer {best['layer']} unit {best['unit']:4d}: "
            f"correlation {best['correlation']:+.3f}"
        )
        acts = (
            np.asarray(states["h"][best["layer"], 0, :, 0, best["unit"]])
            if best["state"] == "h"
            else np.tanh(np.asarray(states["c"][best["layer"], 0, :, 0, best["unit"]]))
        )
        top.append((feature, best["layer"], best["unit"], best["correlation"], acts))
    top.sort(key=lambda t: -abs(t[3]))
    render_html(text, top, out / "cells.html")
    render_png(text, top[:TOP_UNITS], out / "cells.png")
    (out / "cells.json").write_text(json.dumps(ranking, indent=1))
    print(f"wrote {out}/cells.html, {out}/cells.png, {out}/cells.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
