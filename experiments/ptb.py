"""Penn Treebank word-level LSTM language model with truncated BPTT (Zaremba et al. 2014).

    python experiments/ptb.py --config small          # Zaremba small: test perplexity 114.5 in the paper
    python experiments/ptb.py --config small-tied     # same size, dropout and tied embeddings
    python experiments/ptb.py --config medium         # 650 hidden, dropout 0.5, 39 epochs (paper: 82.7); GPU-sized
    python experiments/ptb.py --config small --resume # continue a killed run from its last checkpoint
    python experiments/ptb.py --smoke                 # a few steps, to check that everything runs

Data: ptb.{train,valid,test}.txt from --data-dir, else $JAXRNN_DATA, else ~/.cache/jaxrnn
(jaxrnn.corpora.download('ptb') fetches and verifies them). Outputs go to --out
(checkpoint.msgpack, loss.png, metrics.json).
"""

import argparse
import dataclasses
import math
import sys
import time

import jax

from jaxrnn.corpora import load_ptb
from jaxrnn.lm import LMConfig, train_language_model
from jaxrnn.parallel import check_batch_sizes, initialize_distributed

# -- configurations ----------------------------------------------------------------------------
# Zaremba et al. train on the loss summed over the bptt steps (averaged over the batch); jaxrnn's loss is
# the mean per token. So their learning rate lr and clipping norm c become lr * bptt and c / bptt here
# (for small: 20 and 0.25, which are also the PyTorch word-language-model example's defaults).
CONFIGS = {
    # "small": 2x200 LSTM, no dropout, SGD lr 1 halved each epoch after epoch 4, 13 epochs, clip 5,
    # init U(-0.1, 0.1), batch 20, bptt 20.
    "small": LMConfig(lr=1.0 * 20, clip_norm=5.0 / 20),
    # Same size, with dropout and the embedding tied to the softmax; longer at full learning rate.
    "small-tied": LMConfig(
        lr=1.0 * 20, clip_norm=5.0 / 20, dropout=0.3, tie_weights=True, epochs=20, decay_after=8, lr_decay=0.7
    ),
    # "medium": 2x650, dropout 0.5, lr 1 decayed by 0.8 after epoch 6, 39 epochs, init 0.05, bptt 35.
    "medium": LMConfig(
        hidden_size=650,
        embedding_size=650,
        dropout=0.5,
        lr=1.0 * 35,
        clip_norm=5.0 / 35,
        lr_decay=0.8,
        decay_after=6,
        epochs=39,
        init_scale=0.05,
        bptt=35,
    ),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="small", choices=sorted(CONFIGS))
    p.add_argument("--data-dir", help="folder holding ptb.train.txt, ptb.valid.txt, ptb.test.txt")
    p.add_argument("--out", help="output folder (default runs/ptb-CONFIG)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--devices", type=int, default=None, help="devices to train on, data-parallel (default: all)")
    p.add_argument("--coordinator", help="multi-host: host:port of process 0 (or $JAXRNN_COORDINATOR)")
    p.add_argument("--num-processes", type=int, help="multi-host: number of processes (or $JAXRNN_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, help="multi-host: this process's id (or $JAXRNN_PROCESS_ID)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="also checkpoint every N steps within an epoch")
    p.add_argument("--smoke", action="store_true", help="2 epochs of 5 steps each")
    for field in dataclasses.fields(LMConfig):  # every config value can be overridden
        kind = {"int": int, "float": float, "bool": lambda s: s.lower() in ("1", "true", "yes")}.get(
            field.type.split(" ")[0], str
        )
        p.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=None)
    args = p.parse_args(argv)
    initialize_distributed(args.coordinator, args.num_processes, args.process_id)

    config = CONFIGS[args.config]
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(LMConfig) if getattr(args, f.name) is not None
    }
    if args.smoke:
        overrides = {"epochs": 2, "max_steps_per_epoch": 5, **overrides}
    config = dataclasses.replace(config, **overrides)
    out = args.out or f"runs/ptb-{args.config}{'-smoke' if args.smoke else ''}"

    try:
        check_batch_sizes(args.devices, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)
        vocab, train, valid, test = load_ptb(args.data_dir)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    if args.smoke:
        valid, test = valid[:2000], test[:2000]
    print(f"PTB: vocabulary {len(vocab)}, tokens train {len(train):,} valid {len(valid):,} test {len(test):,}")
    print(f"config {args.config}: {config}")
    start = time.perf_counter()
    metrics = train_language_model(
        config,
        len(vocab),
        train,
        valid,
        test,
        out,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        num_devices=args.devices,
    )
    print(
        f"\nvalid perplexity {metrics['valid_perplexity']:.2f}, test perplexity {metrics['test_perplexity']:.2f} "
        f"({metrics['num_params']:,} parameters; {metrics['wall_time_s']:.0f} s training, "
        f"{metrics['train_tokens_per_s']:,.0f} tokens/s; this process {time.perf_counter() - start:.0f} s)"
    )
    if jax.process_index() == 0:  # with several hosts, process 0 writes the files
        print(f"wrote {out}/metrics.json, {out}/loss.png, {out}/checkpoint.msgpack")
    return 0 if math.isfinite(metrics["test_loss"]) else 1


if __name__ == "__main__":
    sys.exit(main())
