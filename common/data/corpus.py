"""Text corpora: resolve (offline folder, local path, URL or hub), tokenize once, memory-map.

Resolution order for a named corpus (``CORPORA``):
    1. ``$PAPERZOO_DATA/<file>`` (default ``../shared/data`` beside the repo, when it exists)
    2. its public URL (or hub dataset) through Hugging Face ``datasets``, unless offline
       (``HF_DATASETS_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``)
If neither works the error names the file expected and the variable to set.

Tokenizers: ``char`` (one id per distinct character, nanoGPT's shakespeare_char) and ``bpe:<size>``
(byte-level BPE trained locally on the training split). ``train_bpe`` is the lab's one BPE trainer
(Sennrich et al. 2016, through the ``tokenizers`` library), in two styles: byte-level (GPT-2's:
every byte in the alphabet, no unknown token) and Metaspace (NFC, words marked by a leading ``▁`` so
decoding restores the spaces; the translation papers' joint vocabularies); ``cached_bpe`` trains one
once and keeps it as a ``tokenizers`` JSON file. Token ids
are cached once under ``$PAPERZOO_CACHE/tokens`` as a flat ``uint16``/``uint32`` array and opened
with ``np.memmap``. Split: the first 90% of the tokens are train, the rest val (as nanoGPT).

``LanguageModelingTask`` is the common.train Task for next-token prediction on a corpus:
    batch = {"idx": (B, T) long, "targets": (B, T) long}   random windows, pure in (seed, index)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.data.synthetic import generator
from common.errors import PaperzooError
from common.paths import cache_dir, data_dir, write_atomically


@dataclass(frozen=True)
class CorpusSource:
    file: str  # relative to $PAPERZOO_DATA
    url: str | None = None
    hub: str | None = None  # a Hugging Face dataset with a "text" column


CORPORA = {
    "tinyshakespeare": CorpusSource(
        "tinyshakespeare/input.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    ),
}


def offline() -> bool:
    return any(
        os.environ.get(v, "0") not in ("", "0", "false") for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


def _read_with_datasets(data_files: str | None = None, hub: str | None = None) -> str:
    import datasets

    datasets.disable_progress_bars()
    if hub:
        rows = datasets.load_dataset(hub, split="train")
        return "\n".join(rows["text"])
    rows = datasets.load_dataset("text", data_files=data_files, sample_by="document", split="train")
    return "".join(rows["text"])


def load_text(name: str) -> str:
    """The full text of a named corpus (see CORPORA) or of a local text file."""
    path = Path(name).expanduser()
    if path.suffix and path.is_file():
        return _read_with_datasets(data_files=str(path))
    if name not in CORPORA:
        raise PaperzooError(
            f"unknown corpus '{name}'; known: {', '.join(CORPORA)} (or give a path to a .txt file)"
        )
    source = CORPORA[name]
    root = data_dir()
    expected = (root / source.file) if root else Path("$PAPERZOO_DATA") / source.file
    if root and expected.is_file():
        return _read_with_datasets(data_files=str(expected))
    hint = f"expected {expected}; set PAPERZOO_DATA to the folder holding {source.file}"
    if offline():
        raise PaperzooError(f"corpus '{name}' is not available offline: {hint}")
    try:
        return _read_with_datasets(data_files=source.url, hub=source.hub)
    except Exception as err:
        raise PaperzooError(
            f"corpus '{name}' could not be downloaded ({type(err).__name__}): {hint}"
        ) from None


# ---- tokenizers ----------------------------------------------------------------------------
class CharTokenizer:
    def __init__(self, chars: str):
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars)

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> list[int]:
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"kind": "char", "chars": self.chars}))


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    byte_level: bool = False,
    special_tokens: Sequence[str] = (),
    unk_token: str | None = None,
    min_frequency: int = 0,
):
    """A BPE ``tokenizers.Tokenizer`` of ``vocab_size`` ids learned on ``texts``; special tokens take ids 0, 1, ...

    ``byte_level``: GPT-2's byte-level BPE (what ``tokenizers.ByteLevelBPETokenizer`` builds);
    otherwise NFC + Metaspace pre-tokenisation with ``unk_token`` for symbols never seen in training.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if byte_level:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(models.BPE(unk_token=unk_token))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(special_tokens),
        initial_alphabet=alphabet, show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    return tok


def cached_bpe(path: Path, texts: Callable[[], Iterable[str]], vocab_size: int, **options):
    """``train_bpe(texts(), vocab_size, **options)`` the first time, saved atomically to ``path``; then loaded."""
    from tokenizers import Tokenizer

    if path.is_file():
        return Tokenizer.from_file(str(path))
    tok = train_bpe(texts(), vocab_size, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: tok.save(str(tmp)))
    return tok


class BPETokenizer:
    """Byte-level BPE (``train_bpe``) trained on the training text: at least 2 occurrences per merge."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def fit(cls, text: str, vocab_size: int) -> BPETokenizer:
        return cls(train_bpe(text.splitlines(keepends=True), vocab_size, byte_level=True, min_frequency=2))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"kind": "bpe", "tokenizer": self.tokenizer.to_str()}))


def load_tokenizer(path: Path):
    meta = json.loads(path.read_text())
    if meta["kind"] == "char":
        return CharTokenizer(meta["chars"])
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_str(meta["tokenizer"]))


def fit_tokenizer(spec: str, text: str):
    if spec == "char":
        return CharTokenizer.fit(text)
    if spec.startswith("bpe:") and spec[4:].isdigit():
        return BPETokenizer.fit(text, int(spec[4:]))
    raise PaperzooError(f"unknown tokenizer '{spec}'; use 'char' or 'bpe:<vocab size>'")


# ---- tokenized, memory-mapped corpus -------------------------------------------------------
class TokenizedCorpus:
    """Token ids of a corpus, computed once and memory-mapped; ``train``/``val`` are views."""

    def __init__(self, name: str, tokenizer: str = "char", val_fraction: float = 0.1):
        text = None
        key = hashlib.sha256(f"{name}|{tokenizer}".encode()).hexdigest()[:12]
        folder = cache_dir() / "tokens" / f"{Path(name).stem}-{tokenizer.replace(':', '')}-{key}"
        ids_path, tok_path = folder / "ids.bin", folder / "tokenizer.json"
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            text = load_text(name)
            split = int(len(text) * (1 - val_fraction))
            tok = fit_tokenizer(tokenizer, text if tokenizer == "char" else text[:split])
            ids = np.asarray(tok.encode(text), dtype=np.uint16 if tok.vocab_size < 2**16 else np.uint32)
            folder.mkdir(parents=True, exist_ok=True)
            write_atomically(ids_path, ids.tofile)
            write_atomically(tok_path, tok.save)
            meta = {
                "dtype": ids.dtype.name,
                "n_tokens": int(ids.size),
                "vocab_size": tok.vocab_size,
                "source": name,
            }
            # the meta file last: it marks the cache complete
            write_atomically(meta_path, lambda tmp: tmp.write_text(json.dumps(meta)))
        meta = json.loads(meta_path.read_text())
        self.tokenizer = load_tokenizer(tok_path)
        self.vocab_size = meta["vocab_size"]
        self.ids = np.memmap(ids_path, dtype=meta["dtype"], mode="r")
        cut = int(len(self.ids) * (1 - val_fraction))
        self.splits = {"train": self.ids[:cut], "val": self.ids[cut:]}


class LanguageModelingTask:
    """Next-token prediction on random windows of a tokenized corpus; reports val/loss."""

    def __init__(self, corpus: str = "tinyshakespeare", tokenizer: str = "char", block_size: int = 64,
                 eval_batches: int = 20, eval_batch_size: int = 32, eval_seed: int = 1234):  # fmt: skip
        self.data = TokenizedCorpus(corpus, tokenizer)
        self.vocab_size = self.data.vocab_size
        self.block_size, self.eval_batches, self.eval_batch_size = block_size, eval_batches, eval_batch_size
        self.eval_seed = eval_seed

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        ids = self.data.splits["val" if split == "test" else split]
        g = generator(seed, split, index)
        starts = torch.randint(0, len(ids) - self.block_size - 1, (batch_size,), generator=g).tolist()
        window = np.stack([np.asarray(ids[s : s + self.block_size + 1], dtype=np.int64) for s in starts])
        window = torch.from_numpy(window)  # (B, T+1)
        return {"idx": window[:, :-1], "targets": window[:, 1:]}

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        losses = []
        for i in range(self.eval_batches):
            batch = self.batch("val", i, self.eval_batch_size, self.eval_seed)
            losses.append(model({k: v.to(device) for k, v in batch.items()}).float().item())
        return {"val/loss": sum(losses) / len(losses)}
