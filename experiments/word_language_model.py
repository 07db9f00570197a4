"""Bring a pytorch/examples word_language_model checkpoint into jaxrnn, evaluate it in both, and export it back.

    # upstream, unchanged: trains and saves the whole pickled RNNModel (torch.save(model, f))
    python main.py --data DATA --epochs 1 --save model.pt
    # here: read it (no code from the file runs), evaluate in jaxrnn, export the weights for upstream's RNNModel
    python experiments/word_language_model.py model.pt --data DATA --export back.pt --upstream UPSTREAM_DIR

DATA holds train.txt, valid.txt and test.txt, read as upstream's data.Corpus
reads them (each line's words and '<eos>', ids in order of first appearance
across train, valid, test), so the ids match the checkpoint's. The
perplexities are upstream's evaluate(): eval batch 10, bptt 35, state carried
across chunks. With --upstream (a checkout of word_language_model), the
exported weights are loaded strictly into upstream's own RNNModel and
evaluated by torch as well (UPSTREAM_DIR: a checkout of word_language_model).
"""

import argparse
import math
import os
import sys

import jax.numpy as jnp
import numpy as np

import interop
import jaxrnn
from jaxrnn.lm import evaluate_stream

# -- config ----------------------------------------------------------------------------------
EVAL_BATCH_SIZE, BPTT = 10, 35  # upstream main.py's eval_batch_size and default --bptt
CELLS = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}
# upstream's attribute names -> jaxrnn.SequenceModel's (the untied and the tied head)
RENAME = {"encoder.": "embed.", "decoder.": "fc."}
RENAME_TIED = {"encoder.": "embed.", "decoder.bias": "fc_bias"}
TIED = {"decoder.weight": "encoder.weight"}


def upstream_corpus(data_dir: str) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """word_language_model's data.Corpus: ``(word -> id, {'train'|'valid'|'test': ids (T,)})``."""
    vocab: dict[str, int] = {}
    splits = {}
    for split in ("train", "valid", "test"):
        with open(os.path.join(data_dir, f"{split}.txt"), encoding="utf8") as f:
            words = [w for line in f for w in line.split() + ["<eos>"]]
        for w in words:
            vocab.setdefault(w, len(vocab))
        splits[split] = np.array([vocab[w] for w in words], np.int32)
    return vocab, splits


def jaxrnn_twin(state_dict: dict[str, np.ndarray], nonlinearity: str) -> tuple[jaxrnn.SequenceModel, bool, str]:
    """The SequenceModel with the checkpoint's architecture, whether it is tied, and upstream's rnn_type."""
    layers = interop.find_recurrent_layers(state_dict)
    if "rnn." not in layers:
        raise SystemExit(f"no recurrent layer under 'rnn.' in the checkpoint; found {sorted(layers) or 'none'}.")
    kind, config = layers["rnn."]
    vocab_size, embedding_size = state_dict["encoder.weight"].shape
    decoder, encoder = state_dict.get("decoder.weight"), state_dict["encoder.weight"]
    tied = decoder is None or np.array_equal(decoder, encoder)
    model = jaxrnn.SequenceModel(
        vocab_size=int(vocab_size),
        hidden_size=config["hidden_size"],
        embedding_size=int(embedding_size),
        num_layers=config["num_layers"],
        cell=CELLS[kind],
        nonlinearity=nonlinearity,
        tie_weights=tied,
    )
    rnn_type = kind if kind != "RNN" else f"RNN_{nonlinearity.upper()}"
    return model, tied, rnn_type


def torch_perplexity(
    upstream_dir: str, rnn_type: str, model: jaxrnn.SequenceModel, tied: bool, state_dict: dict, ids: np.ndarray
) -> float:
    """Upstream's RNNModel, loaded strictly with ``state_dict``, evaluated as upstream's evaluate() does."""
    import torch

    sys.path.insert(0, upstream_dir)
    from model import RNNModel  # upstream's own class

    net = RNNModel(rnn_type, model.vocab_size, model.embedding_size, model.hidden_size, model.num_layers, 0.0, tied)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    net.eval()
    data = torch.from_numpy(ids.astype(np.int64))
    nbatch = data.size(0) // EVAL_BATCH_SIZE
    data = data[: nbatch * EVAL_BATCH_SIZE].view(EVAL_BATCH_SIZE, -1).t().contiguous()  # upstream batchify
    hidden, total = net.init_hidden(EVAL_BATCH_SIZE), 0.0
    with torch.no_grad():
        for i in range(0, data.size(0) - 1, BPTT):
            seq_len = min(BPTT, len(data) - 1 - i)
            x, y = data[i : i + seq_len], data[i + 1 : i + 1 + seq_len].reshape(-1)
            output, hidden = net(x, hidden)
            total += len(x) * torch.nn.functional.nll_loss(output, y).item()
    return math.exp(total / (len(data) - 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="what upstream main.py saved (--save), or any torch file with its weights")
    p.add_argument("--data", required=True, help="folder with train.txt, valid.txt, test.txt (upstream's --data)")
    p.add_argument("--nonlinearity", default="tanh", choices=["tanh", "relu"], help="for RNN_TANH / RNN_RELU models")
    p.add_argument("--export", help="write the jaxrnn weights back as a torch state_dict for upstream's RNNModel")
    p.add_argument("--upstream", help="a word_language_model checkout: evaluate the export with its RNNModel too")
    args = p.parse_args(argv)

    # 1. Read: whatever container it is, without running code from it.
    checkpoint = interop.read_checkpoint(args.checkpoint)
    where = f" (entry {checkpoint.entry!r})" if checkpoint.entry else ""
    kind = interop.formats.FORMATS[checkpoint.format]
    print(f"{args.checkpoint}: {kind}{where}, {len(checkpoint.state_dict)} tensors")
    for item in checkpoint.left_out:
        print(f"  left out: {item}")

    # 2. Load into the jaxrnn twin.
    model, tied, rnn_type = jaxrnn_twin(checkpoint.state_dict, args.nonlinearity)
    example = jnp.zeros((1, 1), jnp.int32)
    if tied:
        variables = interop.load_state_dict(model, checkpoint.state_dict, example, rename=RENAME_TIED, tied=TIED)
    else:
        variables = interop.load_state_dict(model, checkpoint.state_dict, example, rename=RENAME)
    print(f"jaxrnn: {model.cell.upper()} {model.num_layers}x{model.hidden_size}, vocab {model.vocab_size}, tied={tied}")

    # 3. Evaluate as upstream does.
    vocab, splits = upstream_corpus(args.data)
    if len(vocab) != model.vocab_size:
        raise SystemExit(f"--data has {len(vocab)} words but the checkpoint's embedding has {model.vocab_size} rows.")
    results = {}
    for split in ("valid", "test"):
        loss = evaluate_stream(model, variables["params"], splits[split], EVAL_BATCH_SIZE, BPTT)
        results[split] = math.exp(loss)
        print(f"jaxrnn {split} perplexity {results[split]:.4f}")

    # 4. Export back, in upstream's names (a tied model gets both names of its shared weight).
    back = {"embed.": "encoder.", "fc.": "decoder.", "fc_bias": "decoder.bias"}
    state_dict = interop.to_state_dict(variables, rename=back, tied=TIED if tied else None)
    if args.export:
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, args.export)
        print(f"wrote {args.export}: load with RNNModel(...).load_state_dict(torch.load(path), strict=True)")
    if args.upstream:
        for split in ("valid", "test"):
            ppl = torch_perplexity(args.upstream, rnn_type, model, tied, state_dict, splits[split])
            rel = abs(results[split] - ppl) / ppl
            print(f"torch  {split} perplexity {ppl:.4f} (upstream RNNModel, exported weights; rel. diff. {rel:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
