"""Truncated BPTT language modelling: state carry, resume after a kill, atomic checkpoints, corpus checks."""

import dataclasses
import hashlib
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
import jaxrnn.lm as lm
from jaxrnn import corpora
from jaxrnn.checkpoint import restore_training_state, save_training_state

TINY = lm.LMConfig(
    hidden_size=16,
    embedding_size=8,
    epochs=2,
    batch_size=4,
    bptt=5,
    eval_batch_size=2,
    dropout=0.1,
    optimizer="adam",
    lr=0.01,
)


def _corpus(n=400, vocab=13, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, n).astype(np.int32)


def test_state_carry_equals_running_the_whole_stream():
    model = jaxrnn.SequenceModel(vocab_size=13, hidden_size=8, cell="lstm", num_layers=2, embedding_size=6)
    streams = jaxrnn.contiguous_streams(_corpus(), 4)  # (4, 100)
    params = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    whole, _ = model.apply(params, jnp.asarray(streams[:, :-1]))
    carry, chunks = model.zero_state(4), []
    for x, _ in jaxrnn.bptt_batches(streams, 7):
        logits, carry = model.apply(params, jnp.asarray(x), carry)
        chunks.append(logits)
    np.testing.assert_allclose(jnp.concatenate(chunks, axis=1), whole, atol=1e-5)


def test_uniform_model_perplexity_is_the_vocabulary_size():
    model = jaxrnn.SequenceModel(vocab_size=13, hidden_size=8, embedding_size=6)
    params = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    zeros = jax.tree.map(jnp.zeros_like, params)  # every logit 0: a uniform distribution
    loss = lm.evaluate_stream(model, zeros, _corpus(), batch_size=3, bptt=6)
    assert math.exp(loss) == pytest.approx(13.0, rel=1e-5)


def _train(out, config=TINY, **kwargs):
    data = _corpus()
    return lm.train_language_model(
        config, 13, data, _corpus(120, seed=1), _corpus(120, seed=2), out, progress=False, **kwargs
    )


def test_training_writes_metrics_plot_and_checkpoint(tmp_path):
    metrics = _train(tmp_path)
    assert len(metrics["history"]) == 2
    assert metrics["history"][-1]["train_loss"] < math.log(13)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test_perplexity"] == pytest.approx(math.exp(saved["test_loss"]))
    assert (tmp_path / "loss.png").stat().st_size > 1000 and (tmp_path / "checkpoint.msgpack").exists()


def test_resume_between_epochs_gives_identical_parameters(tmp_path):
    straight = _train(tmp_path / "straight")
    _train(tmp_path / "split", dataclasses.replace(TINY, epochs=1))
    resumed = _train(tmp_path / "split", resume=True)
    for a, b in zip(jax.tree.leaves(straight["params"]), jax.tree.leaves(resumed["params"])):
        np.testing.assert_array_equal(a, b)
    assert resumed["test_loss"] == straight["test_loss"]


def test_resume_after_a_kill_mid_epoch_gives_identical_parameters(tmp_path, monkeypatch):
    straight = _train(tmp_path / "straight")
    real = lm.make_train_block

    def dying_block_factory(*args):
        block, steps = real(*args), []

        def dying(state, xs, *rest):
            if sum(steps) >= 27:  # 20 chunks per epoch: in epoch 2, after its checkpoint at chunk 9
                raise KeyboardInterrupt("killed")
            steps.append(len(xs))
            return block(state, xs, *rest)

        return dying

    monkeypatch.setattr(lm, "make_train_block", dying_block_factory)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "killed", checkpoint_every=3)
    monkeypatch.setattr(lm, "make_train_block", real)
    resumed = _train(tmp_path / "killed", resume=True, checkpoint_every=3)
    for a, b in zip(jax.tree.leaves(straight["params"]), jax.tree.leaves(resumed["params"])):
        np.testing.assert_array_equal(a, b)


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "state.msgpack"
    save_training_state(path, {"w": jnp.arange(3.0)})

    def crash(*args):
        raise OSError("killed during save")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save_training_state(path, {"w": jnp.arange(3.0) + 100})
    monkeypatch.undo()
    restored = restore_training_state(path, {"w": jnp.zeros(3)})
    np.testing.assert_array_equal(restored["w"], [0.0, 1.0, 2.0])


def test_missing_and_corrupt_corpus_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXRNN_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/tinyshakespeare.txt does not exist.*JAXRNN_DATA"):
        corpora.load_shakespeare()
    (tmp_path / "tinyshakespeare.txt").write_text("To be, or not to be\n" * 10)
    with pytest.raises(ValueError, match="is corrupt or a different file"):
        corpora.load_shakespeare()
    with pytest.raises(ValueError, match="unknown corpus 'wikitext'"):
        corpora.read_corpus_file("wikitext", "train.txt")


def test_corpus_checksum_and_tokens(tmp_path, monkeypatch):
    text = " the cat sat \n the dog <unk> \n"
    (tmp_path / "ptb.train.txt").write_text(text)
    fake = corpora.CorpusFile("ptb.train.txt", "unused", hashlib.sha256(text.encode()).hexdigest())
    monkeypatch.setitem(corpora.CORPORA, "ptb", (fake,))
    assert corpora.read_corpus_file("ptb", "ptb.train.txt", tmp_path) == text
    assert corpora.ptb_tokens(text) == ["the", "cat", "sat", "<eos>", "the", "dog", "<unk>", "<eos>"]


def test_download_unpacks_and_verifies_the_time_series(tmp_path, monkeypatch):
    """download('msft'/'sunspots') takes the file out of pmdarima's archives and checks its sha256 (the network
    replaced by archives made here, as pmdarima packs them)."""
    import gzip
    import io
    import tarfile

    csv = b"Date,Open,High,Low,Close,Volume,OpenInt\n1986-03-13,0.0672,0.07533,0.0672,0.07533,1371330506,0\n"
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w:gz") as archive:
        info = tarfile.TarInfo("msft.csv")
        info.size = len(csv)
        archive.addfile(info, io.BytesIO(csv))
    spots = b" 58.0  62.6\n 70.0"
    served = {"msft.tar.gz": tar.getvalue(), "sunspots.txt.gz": gzip.compress(spots)}

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(corpora.urllib.request, "urlopen", lambda url, timeout: Response(served[url.rsplit("/", 1)[1]]))
    for corpus, content in [("msft", csv), ("sunspots", spots)]:
        (spec,) = corpora.CORPORA[corpus]
        monkeypatch.setitem(
            corpora.CORPORA, corpus, (dataclasses.replace(spec, sha256=hashlib.sha256(content).hexdigest()),)
        )
        corpora.download(corpus, tmp_path)
    values, columns = corpora.load_series("msft", tmp_path)
    assert columns == ["Open", "High", "Low", "Volume", "Close"]
    np.testing.assert_array_equal(values, [[0.0672, 0.07533, 0.0672, 1371330506, 0.07533]])
    np.testing.assert_array_equal(corpora.load_series("sunspots", tmp_path)[0][:, 0], [58.0, 62.6, 70.0])
    (spec,) = corpora.CORPORA["sunspots"]
    monkeypatch.setitem(corpora.CORPORA, "sunspots", (dataclasses.replace(spec, sha256="0" * 64),))
    (tmp_path / "sunspots_monthly.txt").unlink()
    with pytest.raises(ValueError, match=r"has sha256 .* expected 0000.*nothing saved"):
        corpora.download("sunspots", tmp_path)
    assert not (tmp_path / "sunspots_monthly.txt").exists()


def test_tied_weights_share_the_embedding():
    model = jaxrnn.SequenceModel(vocab_size=13, hidden_size=8, embedding_size=8, tie_weights=True)
    params = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    assert "fc" not in params and params["fc_bias"].shape == (13,)
    with pytest.raises(ValueError, match="tie_weights needs embedding_size == hidden_size"):
        jaxrnn.SequenceModel(vocab_size=13, hidden_size=8, embedding_size=6, tie_weights=True)


def test_learning_rate_schedule_is_zarembas():
    schedule = lm.learning_rate_schedule(lm.LMConfig(), steps_per_epoch=10)
    lrs = [float(schedule(jnp.int32(10 * e))) for e in range(7)]
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.125]
