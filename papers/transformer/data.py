"""Data for the Transformer: Multi30k de->en with a joint BPE vocabulary, BLEU, and the copy task.

Vaswani et al. 2017 (arXiv 1706.03762, Sec. 5.1) train on WMT 2014 with a shared source-target
byte-pair-encoding vocabulary (Sennrich et al. 2016). At our scale we use Multi30k task 1
(Elliott et al. 2016; ``common.data.multi30k``): 29,000 / 1,014 / 1,000 German-English image-caption
pairs (train / val / test_2016_flickr).

Vocabulary: one BPE model (``common.data.corpus.cached_bpe``, Metaspace pre-tokenisation, so
decoding restores the spaces) trained on the German and English training sentences, special tokens
<pad>=0, <s>=1 (BOS), </s>=2 (EOS), <unk>=3, cached as JSON under ``$PAPERZOO_CACHE/transformer/``.

Batches (``common.train`` Task contract, pure in (seed, index)): pairs are shuffled once per epoch
and padded on the right:

    src = x + [EOS]   (B, S)        tgt_in = [BOS] + y   (B, T)        tgt_out = y + [EOS]   (B, T)

Copy task (the Annotated Transformer's first sanity check): the target is the source, 10 symbols
drawn from a vocabulary of 11 (3 of them specials: <pad>=0, <s>=1, </s>=2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from common.data.corpus import cached_bpe, offline
from common.data.multi30k import load_multi30k
from common.data.synthetic import generator
from common.errors import PaperzooError
from common.paths import cache_dir

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


# ---- joint BPE vocabulary ----------------------------------------------------------------------
def joint_bpe(path: Path, texts: Callable[[], Iterable[str]], vocab_size: int):
    """A shared source-target BPE (Metaspace ``cached_bpe``) with <pad>, <s>, </s>, <unk> as ids 0-3."""
    return cached_bpe(path, texts, vocab_size, special_tokens=[PAD, BOS, EOS, UNK], unk_token=UNK)


def multi30k_bpe(vocab_size: int = 8000, root: Path | None = None, cache: Path | None = None):
    """The joint de+en BPE of the Multi30k training split, trained once and cached."""
    path = (cache or cache_dir() / "transformer") / f"multi30k-bpe{vocab_size}.json"
    return joint_bpe(path, lambda: [s for pair in load_multi30k("train", root) for s in pair], vocab_size)


def encode_pairs(tok, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Sentence pairs -> BPE id pairs (no specials)."""
    src = tok.encode_batch([s for s, _ in pairs], add_special_tokens=False)
    tgt = tok.encode_batch([t for _, t in pairs], add_special_tokens=False)
    return [(s.ids, t.ids) for s, t in zip(src, tgt)]


def detokenize(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True)


# ---- WMT 2014 (Table 2): online only, for a big GPU ------------------------------------------------
WMT14_HUB = "wmt/wmt14"  # parquet; configs "de-en", "fr-en", ...; column "translation" = {lang: text}
WMT14_SPLITS = {"train": "train", "val": "validation", "test": "test"}  # val newstest2013, test newstest2014


def _wmt14_rows(config: str, split: str) -> list[dict[str, str]]:
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(WMT14_HUB, config, split=split)["translation"]


def load_wmt14(split: str, source: str = "en", target: str = "de") -> list[tuple[str, str]]:
    """(source, target) pairs of WMT 2014 through Hugging Face ``datasets`` (4.5M train pairs for EN-DE)."""
    if split not in WMT14_SPLITS:
        raise PaperzooError(f"unknown WMT14 split '{split}'; choose train, val or test")
    if "en" not in (source, target) or source == target:
        raise PaperzooError(f"WMT14 pairs English with another language, not '{source}'->'{target}'")
    other = target if source == "en" else source
    if offline():
        raise PaperzooError(
            f"WMT14 is only read from the Hugging Face hub ({WMT14_HUB}, '{other}-en'); "
            "unset HF_DATASETS_OFFLINE / HF_HUB_OFFLINE on a machine with internet"
        )
    rows = _wmt14_rows(f"{other}-en", WMT14_SPLITS[split])
    return [(row[source].strip(), row[target].strip()) for row in rows]


def wmt14_bpe(source: str, target: str, vocab_size: int = 37000, cache: Path | None = None):
    """The joint BPE of a WMT14 training set (Sec. 5.1: shared vocabulary of about 37000 tokens), cached."""
    pair = "-".join(sorted((source, target)))
    path = (cache or cache_dir() / "transformer") / f"wmt14-{pair}-bpe{vocab_size}.json"
    return joint_bpe(
        path, lambda: (s for pair in load_wmt14("train", source, target) for s in pair), vocab_size
    )


class PackedPairs:
    """Millions of (x, y) id pairs in flat int32 arrays: a compact, read-only sequence of pairs.

    Built chunk by chunk (``encode_packed``) so the Python lists of one chunk only ever exist at once.
    """

    def __init__(self, chunks):
        import numpy as np

        xs, ys, x_len, y_len = [], [], [], []
        for pairs in chunks:
            for x, y in pairs:
                x_len.append(len(x))
                y_len.append(len(y))
            xs.append(np.fromiter((t for x, _ in pairs for t in x), dtype=np.int32))
            ys.append(np.fromiter((t for _, y in pairs for t in y), dtype=np.int32))
        self._x, self._y = (
            np.concatenate(xs or [np.zeros(0, np.int32)]),
            np.concatenate(ys or [np.zeros(0, np.int32)]),
        )
        self._x_off = np.concatenate([[0], np.cumsum(np.asarray(x_len, dtype=np.int64))])
        self._y_off = np.concatenate([[0], np.cumsum(np.asarray(y_len, dtype=np.int64))])

    def __len__(self) -> int:
        return len(self._x_off) - 1

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        x = self._x[self._x_off[i] : self._x_off[i + 1]].tolist()
        return x, self._y[self._y_off[i] : self._y_off[i + 1]].tolist()


def encode_packed(tok, pairs: list[tuple[str, str]], max_tokens: int | None = None, chunk: int = 100_000):
    """``encode_pairs`` for millions of pairs, into a PackedPairs; drops pairs with a side over max_tokens."""

    def chunks():
        for start in range(0, len(pairs), chunk):
            ids = encode_pairs(tok, pairs[start : start + chunk])
            if max_tokens is not None:
                ids = [(x, y) for x, y in ids if len(x) <= max_tokens and len(y) <= max_tokens]
            yield ids

    return PackedPairs(chunks())


# ---- batches -------------------------------------------------------------------------------------
def pad_right(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int = PAD_ID) -> dict[str, torch.Tensor]:
    """(x, y) id pairs -> {"src": x+[EOS], "tgt_in": [BOS]+y, "tgt_out": y+[EOS]}, right-padded."""
    return {
        "src": pad_right([x + [EOS_ID] for x, _ in examples], pad_id),
        "tgt_in": pad_right([[BOS_ID] + y for _, y in examples], pad_id),
        "tgt_out": pad_right([y + [EOS_ID] for _, y in examples], pad_id),
    }


def translation_batch(
    examples: list[tuple[list[int], list[int]]], index: int, batch_size: int, seed: int, bucket: int = 0
) -> dict[str, torch.Tensor]:
    """Batch ``index`` of an endless stream of epochs, each a fresh shuffle; pure in (seed, index).

    ``bucket > 1`` batches pairs of similar length together (Sec. 5.1: "batched together by
    approximate sequence length"), which removes most of the padding: each run of ``bucket``
    consecutive batches of the shuffled epoch is sorted by (source, target) length, cut into
    batches again, and those batches are taken in a random order. An epoch still sees every pair
    (but the last ``len % batch_size``) exactly once.
    """
    per_epoch = max(len(examples) // batch_size, 1)
    epoch, position = divmod(index, per_epoch)
    order = torch.randperm(len(examples), generator=generator(seed, "train", epoch))
    if bucket <= 1:
        chosen = order[position * batch_size : (position + 1) * batch_size].tolist()
        return collate([examples[i] for i in chosen])
    chunk, slot = divmod(position, bucket)
    n_batches = min(bucket, per_epoch - chunk * bucket)  # batches in this chunk
    start = chunk * bucket * batch_size
    members = order[start : start + n_batches * batch_size].tolist()
    members.sort(key=lambda i: (len(examples[i][0]), len(examples[i][1])))
    which = torch.randperm(n_batches, generator=generator(seed, f"bucket{chunk}", epoch))[slot].item()
    chosen = members[which * batch_size : (which + 1) * batch_size]
    return collate([examples[i] for i in chosen])


# ---- copy task -------------------------------------------------------------------------------------
COPY_VOCAB, COPY_LENGTH = 11, 10


def copy_task_batch(
    step: int,
    batch_size: int,
    seed: int,
    vocab_size: int = COPY_VOCAB,
    length: int = COPY_LENGTH,
    split: str = "train",
) -> dict[str, torch.Tensor]:
    """Random symbols x in {3, ..., V-1}^length; src = x, tgt_in = [BOS] + x, tgt_out = x + [EOS]."""
    x = torch.randint(3, vocab_size, (batch_size, length), generator=generator(seed, split, step))
    bos = torch.full((batch_size, 1), BOS_ID, dtype=torch.long)
    eos = torch.full((batch_size, 1), EOS_ID, dtype=torch.long)
    return {"src": x, "tgt_in": torch.cat([bos, x], dim=1), "tgt_out": torch.cat([x, eos], dim=1)}
