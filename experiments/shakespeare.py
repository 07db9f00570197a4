"""Character-level LSTM language model on tiny-shakespeare, trained with truncated BPTT.

    python experiments/shakespeare.py                       # train (default config), then print a sample
    python experiments/shakespeare.py --sample-only --prompt "ROMEO:"   # sample from the trained model
    python experiments/shakespeare.py --resume              # continue a killed run
    python experiments/shakespeare.py --smoke               # a few steps, to check that everything runs

Split: first 90% train, last 10% validation (nanoGPT's split; its character
transformer reaches 1.47 nats/char). Data: tinyshakespeare.txt from --data-dir,
else $JAXRNN_DATA, else ~/.cache/jaxrnn (jaxrnn.corpora.download('tinyshakespeare')).
"""

import argparse
import dataclasses
import sys

import jax
import jax.numpy as jnp

import jaxrnn
from jaxrnn.checkpoint import restore_training_state, save_training_state
from jaxrnn.corpora import load_shakespeare
from jaxrnn.lm import LMConfig, init_params, make_model, train_language_model
from jaxrnn.parallel import check_batch_sizes, initialize_distributed

# -- config ----------------------------------------------------------------------------------
CONFIG = LMConfig(
    cell="lstm",
    num_layers=2,
    hidden_size=512,
    embedding_size=64,
    dropout=0.2,
    optimizer="adam",
    lr=3e-3,
    lr_decay=0.85,
    decay_after=4,
    clip_norm=5.0,
    init_scale=None,
    epochs=12,
    batch_size=32,
    bptt=100,
    eval_batch_size=64,
    seed=0,
)
PROMPT, SAMPLE_LENGTH, TEMPERATURE = "ROMEO:\n", 500, 0.8


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder holding tinyshakespeare.txt")
    p.add_argument("--out", default="runs/shakespeare", help="output folder")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--devices", type=int, default=None, help="devices to train on, data-parallel (default: all)")
    p.add_argument("--coordinator", help="multi-host: host:port of process 0 (or $JAXRNN_COORDINATOR)")
    p.add_argument("--num-processes", type=int, help="multi-host: number of processes (or $JAXRNN_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, help="multi-host: this process's id (or $JAXRNN_PROCESS_ID)")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--smoke", action="store_true", help="2 epochs of 3 steps, small model")
    p.add_argument("--sample-only", action="store_true", help="load params.msgpack from --out and sample")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--length", type=int, default=SAMPLE_LENGTH)
    p.add_argument("--temperature", type=float, default=TEMPERATURE)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="cut each epoch short (timing runs)")
    args = p.parse_args(argv)
    initialize_distributed(args.coordinator, args.num_processes, args.process_id)

    overrides = {
        k: v
        for k, v in (
            ("epochs", args.epochs),
            ("hidden_size", args.hidden_size),
            ("seed", args.seed),
            ("max_steps_per_epoch", args.max_steps_per_epoch),
        )
        if v is not None
    }
    if args.smoke:
        overrides = {"epochs": 2, "max_steps_per_epoch": 3, "hidden_size": 64, "batch_size": 8, "bptt": 20, **overrides}
    config = dataclasses.replace(CONFIG, **overrides)
    try:
        check_batch_sizes(args.devices, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)
        vocab, train, valid = load_shakespeare(args.data_dir)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    if args.smoke:
        valid = valid[:5000]
    model = make_model(config, len(vocab))
    params_path = f"{args.out}/params.msgpack"

    if args.sample_only:
        params = restore_training_state(params_path, init_params(config, model, jax.random.key(0)))
    else:
        print(f"tiny-shakespeare: vocabulary {len(vocab)}, train {len(train):,} characters, valid {len(valid):,}")
        print(f"config: {config}")
        metrics = train_language_model(
            config,
            len(vocab),
            train,
            valid,
            None,
            args.out,
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
            num_devices=args.devices,
            unit="char",
        )
        params = metrics["params"]
        if jax.process_index() == 0:  # with several hosts, process 0 writes the files
            save_training_state(params_path, params)
        print(
            f"\nvalidation loss {metrics['valid_loss']:.4f} nats/char "
            f"({metrics['valid_bits_per_char']:.3f} bits/char); "
            f"{metrics['wall_time_s']:.0f} s training, {metrics['train_tokens_per_s']:,.0f} characters/s"
        )

    missing = sorted(set(args.prompt) - set(vocab.tokens))
    if missing:
        sys.exit(f"error: the prompt has characters outside the vocabulary: {missing}")
    generated = jaxrnn.generate(
        model,
        {"params": params},
        jnp.asarray(vocab.encode(args.prompt)),
        args.length,
        jax.random.key(config.seed),
        temperature=args.temperature,
    )
    print(f"\n--- sample (temperature {args.temperature}) ---\n{args.prompt}{vocab.decode(generated)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
