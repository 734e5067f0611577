"""Long documents for language modelling: the loss as a function of the position in the document.

Sun et al. 2024 (TTT, arXiv 2407.04620), Fig. 2 and the long-context figures: the loss at token t of a
long document keeps falling with t for a Transformer and for TTT (Mamba's stops falling after 16k
tokens). ``LongDocumentTask`` measures that curve on a corpus of long real documents, for any CausalLM.

Corpus (``DOCUMENT_CORPORA``, read from ``$PAPERZOO_DATA``, default ``../shared/data``; no download):
``cpython-stdlib``, the 601 source files of the CPython 3.11.7 standard library, gzipped JSON lines
``{"path", "text"}`` (see shared/data/README.md). A local ``.jsonl`` / ``.jsonl.gz`` file works too.

Split rule, by document: a document is val iff ``blake2b(path)`` read as a number in [0, 1) is below
``val_fraction``; no document is in both splits, and adding documents moves none of the others.

Tokenizers (common.data.corpus): ``char`` is fitted on all the text, like corpus.py's, so a character seen
only in val has its own (untrained) id and no unknown token hides it; ``bpe:<size>`` (byte-level, no unknown
token) is fitted on the train documents only. Token ids are cached once under
``$PAPERZOO_CACHE/documents`` as one flat array with per-document offsets and opened with ``np.memmap``.

Windows: only documents of at least T + 1 tokens (T = block_size) are used, and a window always holds
the first T + 1 tokens of one document, so position t of a window is position t of the document:
    batch = {"idx": (B, T) long, "targets": (B, T) long}   idx = doc[0:T], targets = doc[1:T+1]
Position t predicts document token t + 1 from its first t + 1 tokens. ``evaluate`` reports, over
``eval_windows`` fixed val documents (at most the val documents there are):
    val/loss                            the mean loss over all T positions
    val/loss_pos_L<hi>                  the mean loss over the positions lo <= t < hi of bucket_edges[i]
    val/loss_last_minus_second_quarter  mean over [3T/4, T) - mean over [T/4, T/2); < 0: falls with position
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.data.corpus import fit_tokenizer, load_tokenizer
from common.data.synthetic import generator
from common.errors import PaperzooError
from common.paths import cache_dir, data_dir, write_atomically

DOCUMENT_CORPORA = {"cpython-stdlib": "cpython-stdlib/cpython-3.11.7-lib.jsonl.gz"}  # under $PAPERZOO_DATA


def load_documents(name: str) -> list[tuple[str, str]]:
    """(path, text) of every document of a named corpus (DOCUMENT_CORPORA) or of a local .jsonl[.gz] file."""
    file = Path(name).expanduser()
    if not (file.name.endswith((".jsonl", ".jsonl.gz")) and file.is_file()):
        if name not in DOCUMENT_CORPORA:
            raise PaperzooError(f"unknown document corpus '{name}'; known: {', '.join(DOCUMENT_CORPORA)} "
                                "(or give a path to a .jsonl or .jsonl.gz file)")  # fmt: skip
        root, relative = data_dir(), DOCUMENT_CORPORA[name]
        file = (root / relative) if root else Path("$PAPERZOO_DATA") / relative
        if not file.is_file():
            raise PaperzooError(f"document corpus '{name}' is not available: expected {file}; "
                                f"set PAPERZOO_DATA to the folder holding {relative}")  # fmt: skip
    with (gzip.open if file.suffix == ".gz" else open)(file, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    return [(row["path"], row["text"]) for row in rows]


def in_val(path: str, val_fraction: float) -> bool:
    """The split rule: is the document at ``path`` a val document?"""
    digest = hashlib.blake2b(path.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def tokenized_documents(name: str, tokenizer: str, val_fraction: float):
    """(ids, tokenizer, meta): every document's token ids, concatenated, computed once and memory-mapped.

    meta: dtype, vocab_size, source, paths and offsets (document i is ids[offsets[i] : offsets[i + 1]])."""
    key = hashlib.sha256(f"{name}|{tokenizer}|{val_fraction}".encode()).hexdigest()[:12]
    folder = cache_dir() / "documents" / f"{Path(name).name.split('.')[0]}-{tokenizer.replace(':', '')}-{key}"
    ids_path, tok_path, meta_path = folder / "ids.bin", folder / "tokenizer.json", folder / "meta.json"
    if not meta_path.exists():
        docs = load_documents(name)
        fit_on = docs if tokenizer == "char" else [d for d in docs if not in_val(d[0], val_fraction)]
        tok = fit_tokenizer(tokenizer, "\n".join(text for _, text in fit_on))
        encoded = [tok.encode(text) for _, text in docs]
        dtype = np.uint16 if tok.vocab_size < 2**16 else np.uint32
        ids = np.concatenate([np.asarray(e, dtype=dtype) for e in encoded])
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(ids_path, ids.tofile)
        write_atomically(tok_path, tok.save)
        offsets = np.cumsum([0] + [len(e) for e in encoded]).tolist()
        meta = {"dtype": ids.dtype.name, "vocab_size": tok.vocab_size, "source": name,
                "paths": [path for path, _ in docs], "offsets": offsets}  # fmt: skip
        # the meta file last: it marks the cache complete
        write_atomically(meta_path, lambda tmp: tmp.write_text(json.dumps(meta)))
    meta = json.loads(meta_path.read_text())
    return np.memmap(ids_path, dtype=meta["dtype"], mode="r"), load_tokenizer(tok_path), meta


class LongDocumentTask:
    """Next-token prediction on the first block_size + 1 tokens of long documents; loss by position.

    Attributes: ``vocab_size``; ``n_docs`` {"train", "val"}: the documents long enough for a window;
    ``bucket_edges`` [(lo, hi)]: the positions lo <= t < hi of ``val/loss_pos_L<hi>``; ``eval_starts``: the
    offsets into ``ids`` of the evaluation windows (``n_eval_windows`` = min(eval_windows, n_docs["val"])).
    """

    def __init__(self, corpus: str = "cpython-stdlib", tokenizer: str = "char", block_size: int = 1024,
                 buckets: int = 8, eval_windows: int = 64, eval_batch_size: int = 8, eval_seed: int = 1234,
                 val_fraction: float = 0.1):  # fmt: skip
        if block_size < 4 or block_size % 4 or buckets < 1 or block_size % buckets:
            raise PaperzooError(f"block_size must be a positive multiple of 4 and of buckets; "
                                f"got block_size={block_size}, buckets={buckets}")  # fmt: skip
        if not 0 < val_fraction < 1 or eval_windows < 1 or eval_batch_size < 1:
            raise PaperzooError(f"need 0 < val_fraction < 1, eval_windows >= 1 and eval_batch_size >= 1; got "
                                f"{val_fraction}, {eval_windows}, {eval_batch_size}")  # fmt: skip
        self.ids, self.tokenizer, meta = tokenized_documents(corpus, tokenizer, val_fraction)
        self.vocab_size = meta["vocab_size"]
        self.block_size, self.eval_batch_size = block_size, eval_batch_size
        lengths, self.starts = {"train": [], "val": []}, {"train": [], "val": []}
        offsets = meta["offsets"]
        for path, lo, hi in zip(meta["paths"], offsets[:-1], offsets[1:]):
            split = "val" if in_val(path, val_fraction) else "train"
            lengths[split].append(hi - lo)
            if hi - lo > block_size:
                self.starts[split].append(lo)
        self.n_docs = {split: len(starts) for split, starts in self.starts.items()}
        for split, n in self.n_docs.items():
            if n == 0:
                raise PaperzooError(
                    f"no {split} document of corpus '{corpus}' has block_size + 1 = {block_size + 1} tokens "
                    f"({len(lengths[split])} {split} documents, the longest {max(lengths[split], default=0)} "
                    f"tokens); use a smaller block_size"
                )
        width = block_size // buckets
        self.bucket_edges = [(i * width, (i + 1) * width) for i in range(buckets)]
        order = torch.randperm(self.n_docs["val"], generator=generator(eval_seed, "val", 0))[:eval_windows]
        self.eval_starts = [self.starts["val"][i] for i in order.tolist()]
        self.n_eval_windows = len(self.eval_starts)

    def _windows(self, starts: list[int]) -> torch.Tensor:  # (B, T + 1) long
        T = self.block_size
        return torch.from_numpy(
            np.stack([np.asarray(self.ids[s : s + T + 1], dtype=np.int64) for s in starts])
        )

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        starts = self.starts["val" if split == "test" else split]
        pick = torch.randint(0, len(starts), (batch_size,), generator=generator(seed, split, index)).tolist()
        window = self._windows([starts[i] for i in pick])  # (B, T + 1)
        return {"idx": window[:, :-1], "targets": window[:, 1:]}

    def loss_by_position(self, model: nn.Module, device: torch.device) -> torch.Tensor:
        """(T,) float64 on the CPU: the mean loss at each position over the evaluation windows."""
        total = torch.zeros(self.block_size, dtype=torch.float64)
        with torch.no_grad():
            for i in range(0, self.n_eval_windows, self.eval_batch_size):
                window = self._windows(self.eval_starts[i : i + self.eval_batch_size]).to(device)
                logits = model.logits(window[:, :-1]).float()  # (B, T, V)
                loss = F.cross_entropy(logits.transpose(1, 2), window[:, 1:], reduction="none")  # (B, T)
                total += loss.sum(0).double().cpu()
        return total / self.n_eval_windows

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        curve, q = self.loss_by_position(model, device), self.block_size // 4
        metrics = {"val/loss": curve.mean().item()}
        for lo, hi in self.bucket_edges:
            metrics[f"val/loss_pos_L{hi}"] = curve[lo:hi].mean().item()
        metrics["val/loss_last_minus_second_quarter"] = (
            curve[3 * q :].mean() - curve[q : 2 * q].mean()
        ).item()
        return metrics
