"""Sequence to sequence: human-written dates to ISO dates, with and without attention, and a torch twin.

The course's translation shape on a task whose answer can be checked exactly:
"friday, march 5, 2021", "5th of mar 2021", "2021/3/5" -> "2021-03-05". An
encoder LSTM reads the characters of the source; its final state starts a
decoder LSTM that writes the target one character at a time (teacher forcing
in training; greedy and beam-search decoding under ``jit``). The second model
adds attention over the encoder's outputs (``jaxrnn.Seq2Seq(attention=True)``).
Both are scored by exact match on held-out dates that never occur in training.

The same weights then go into a torch twin (nn.Embedding, nn.LSTM with
``pack_padded_sequence``, nn.Linear; through ``interop.to_state_dict``), which
must give the same logits and decode the same strings.

    python experiments/seq2seq.py               # a few minutes on 2 CPU cores
    python experiments/seq2seq.py --smoke       # a few steps
"""

import argparse
import datetime
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from jaxrnn.seq2seq import Seq2Seq, beam_search, greedy_decode

# -- config ----------------------------------------------------------------------------------
TRAIN, TEST, HIDDEN, EMBED, BATCH, STEPS, LR, BEAM, SEED = 20_000, 2_000, 128, 32, 64, 2_000, 3e-3, 4, 0
MONTHS = "january february march april may june july august september october november december".split()
DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
PAD, BOS, EOS = 0, 1, 2
TARGET_VOCAB = ["<pad>", "<s>", "</s>", *"0123456789-"]


def human(date: datetime.date, style: int) -> str:
    """One of eight ways people write ``date``."""
    month, mon = MONTHS[date.month - 1], MONTHS[date.month - 1][:3]
    suffix = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}.get(date.day, "th")
    return [
        f"{month} {date.day}, {date.year}",
        f"{date.day} {mon} {date.year}",
        f"{mon} {date.day:02d} {date.year}",
        f"{DAYS[date.weekday()]}, {month} {date.day}, {date.year}",
        f"{date.day}{suffix} of {month} {date.year}",
        f"{date.year}/{date.month}/{date.day}",
        f"{mon}. {date.day} {date.year}",
        f"the {date.day}{suffix} of {month}, {date.year}",
    ][style]


def make_pairs(n: int, rng: np.random.Generator, exclude: set[str]) -> list[tuple[str, str]]:
    start, span = datetime.date(1900, 1, 1).toordinal(), 200 * 365
    pairs: dict[str, str] = {}
    while len(pairs) < n:
        date = datetime.date.fromordinal(start + int(rng.integers(span)))
        source = human(date, int(rng.integers(8)))
        if source not in exclude:
            pairs[source] = date.isoformat()
    return list(pairs.items())


def encode(pairs, src_index, max_src):
    """``(src (N, S), src_lengths (N,), tgt_in (N, 11), tgt_out (N, 11))`` ids."""
    src = np.zeros((len(pairs), max_src), np.int32)
    lengths = np.zeros(len(pairs), np.int32)
    tgt = np.array([[TARGET_VOCAB.index(c) for c in t] for _, t in pairs], np.int32)  # (N, 10)
    for i, (s, _) in enumerate(pairs):
        src[i, : len(s)] = [src_index[c] for c in s]
        lengths[i] = len(s)
    tgt_in = np.concatenate([np.full((len(pairs), 1), BOS, np.int32), tgt], axis=1)
    tgt_out = np.concatenate([tgt, np.full((len(pairs), 1), EOS, np.int32)], axis=1)
    return src, lengths, tgt_in, tgt_out


def text_of(ids: np.ndarray) -> str:
    out = []
    for i in ids.tolist():
        if i == EOS:
            break
        out.append(TARGET_VOCAB[i] if i > EOS else "?")
    return "".join(out)


def torch_twin(model: Seq2Seq, variables, src, lengths, tgt_in, max_len):
    """The same network in torch, loaded with the same weights: ``(teacher-forced logits, greedy strings)``."""
    import torch
    import torch.nn as tnn

    import interop

    class TorchSeq2Seq(tnn.Module):
        def __init__(self):
            super().__init__()
            self.src_embed = tnn.Embedding(model.src_vocab_size, model.embedding_size)
            self.tgt_embed = tnn.Embedding(model.tgt_vocab_size, model.embedding_size)
            self.encoder = tnn.LSTM(model.embedding_size, model.hidden_size, batch_first=True)
            self.decoder = tnn.LSTM(model.embedding_size, model.hidden_size, batch_first=True)
            if model.attention:
                self.score = tnn.Linear(model.hidden_size, model.hidden_size, bias=False)
                self.combine = tnn.Linear(2 * model.hidden_size, model.hidden_size, bias=False)
            self.out = tnn.Linear(model.hidden_size, model.tgt_vocab_size)

        def encode(self, src, lengths):
            packed = tnn.utils.rnn.pack_padded_sequence(self.src_embed(src), lengths, True, enforce_sorted=False)
            out, state = self.encoder(packed)
            return tnn.utils.rnn.pad_packed_sequence(out, True, total_length=src.shape[1])[0], state

        def decode(self, tgt_in, state, enc_out, lengths):
            h, state = self.decoder(self.tgt_embed(tgt_in), state)
            if model.attention:
                scores = torch.einsum("nth,nsh->nts", h, self.score(enc_out))
                valid = (torch.arange(enc_out.shape[1])[None, :] < lengths[:, None])[:, None, :]
                weights = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)
                h = torch.tanh(self.combine(torch.cat([torch.einsum("nts,nsh->nth", weights, enc_out), h], -1)))
            return self.out(h), state

    net = TorchSeq2Seq()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in interop.to_state_dict(variables).items()}, strict=True)
    src, lengths, tgt_in = (
        torch.from_numpy(src).long(),
        torch.from_numpy(lengths).long(),
        torch.from_numpy(tgt_in).long(),
    )
    with torch.no_grad():
        enc_out, state = net.encode(src, lengths)
        logits = net.decode(tgt_in, state, enc_out, lengths)[0].numpy()
        token, tokens = torch.full((src.shape[0], 1), BOS), []
        for _ in range(max_len):
            step_logits, state = net.decode(token, state, enc_out, lengths)
            token = step_logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
    return logits, [text_of(row) for row in torch.cat(tokens, 1).numpy()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--out", default="runs/seq2seq", help="folder for results.json")
    p.add_argument("--smoke", action="store_true", help="30 steps, 200 test dates")
    args = p.parse_args(argv)
    steps, n_test = (30, 200) if args.smoke else (args.steps, TEST)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    # -- data ----------------------------------------------------------------------------------------
    rng = np.random.default_rng(args.seed)
    test_pairs = make_pairs(n_test, rng, set())
    train_pairs = make_pairs(TRAIN, rng, {s for s, _ in test_pairs})  # no held-out source is ever trained on
    chars = sorted({c for s, _ in train_pairs + test_pairs for c in s})
    src_index = {c: i + 1 for i, c in enumerate(chars)}  # 0 is padding
    max_src = max(len(s) for s, _ in train_pairs + test_pairs)
    train, test = encode(train_pairs, src_index, max_src), encode(test_pairs, src_index, max_src)
    example = f"{test_pairs[0][0]!r} -> {test_pairs[0][1]!r}"
    print(f"{len(train_pairs)} training pairs, {len(test_pairs)} held out; e.g. {example}")

    results = {"steps": steps, "train_pairs": len(train_pairs), "test_pairs": len(test_pairs)}
    for attention in (False, True):
        name = "attention" if attention else "no attention"
        model = Seq2Seq(len(chars) + 1, len(TARGET_VOCAB), HIDDEN, EMBED, attention=attention)
        params = model.init(jax.random.key(args.seed), *(jnp.asarray(a[:2]) for a in train[:3]))["params"]
        optimizer = optax.adam(LR)

        def loss_fn(params, batch, rng, model=model):
            src, lengths, tgt_in, tgt_out = batch
            return jaxrnn.masked_cross_entropy(model.apply({"params": params}, src, lengths, tgt_in), tgt_out), {}

        def batches():
            while True:
                idx = rng.integers(0, len(train_pairs), BATCH)
                yield tuple(a[idx] for a in train)

        state, losses = jaxrnn.fit(
            jaxrnn.make_train_step(loss_fn, optimizer),
            jaxrnn.init_train_state(params, optimizer),
            batches(),
            num_steps=steps,
            log_every=max(steps // 5, 1),
            log=lambda i, loss, _, name=name: print(f"  [{name}] step {i:5d}  loss {loss:.4f}"),
            progress=sys.stderr.isatty(),
        )
        variables = {"params": state.params}
        src, lengths, tgt_in, _ = test
        greedy = [text_of(r) for r in np.asarray(greedy_decode(model, variables, src, lengths, BOS, 11))]
        beam = [text_of(r) for r in np.asarray(beam_search(model, variables, src, lengths, BOS, EOS, BEAM, 11))]
        truth = [t for _, t in test_pairs]
        greedy_acc = float(np.mean([g == t for g, t in zip(greedy, truth)]))
        beam_acc = float(np.mean([b == t for b, t in zip(beam, truth)]))
        print(f"{name}: held-out exact match, greedy {greedy_acc:.1%}, beam {BEAM} {beam_acc:.1%}")
        for (s, t), g in list(zip(test_pairs, greedy))[:4]:
            print(f"    {s!r:>36} -> {g!r}  {'ok' if g == t else 'should be ' + repr(t)}")
        entry = {"greedy_exact_match": greedy_acc, f"beam{BEAM}_exact_match": beam_acc, "final_loss": losses[-1]}
        n = min(256, len(test_pairs))
        try:
            t_logits, t_greedy = torch_twin(model, variables, src[:n], lengths[:n], tgt_in[:n], 11)
        except ImportError:
            print("  (torch not installed: no torch twin)")
        else:
            j_logits = np.asarray(model.apply(variables, src[:n], lengths[:n], tgt_in[:n]))
            diff = float(np.abs(j_logits - t_logits).max())
            same = sum(a == b for a, b in zip(t_greedy, greedy[:n]))
            print(f"  torch twin (same weights): largest logit difference {diff:.1e}; same greedy output {same}/{n}")
            entry.update(torch_max_logit_diff=diff, torch_same_greedy=same)
        results[name] = entry
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
