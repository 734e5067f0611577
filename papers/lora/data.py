"""The data of the LoRA reproduction (Hu et al. 2021, arXiv 2106.09685): one tokenizer for every corpus, the
pretraining task and the two Multi30k targets (``common.data.multi30k``), with their batches and metrics.

tokenizer        one byte-level BPE (``common.data.corpus.cached_bpe``) of the pretraining corpora's train
                 documents and Multi30k's German and English train captions; EOT = 0 ends a document or caption,
                 SEP = 1 separates a source from its target
PretrainTask     next-token prediction on tinyshakespeare and the CPython standard library, an equal share of
                 every batch from each corpus: {"idx", "targets"} (B, T)
CaptionsTask     target (a), domain adaptation: the English captions as one stream, windows (B, T); val/loss
TranslationTask  target (b), like the paper's E2E NLG: ``German SEP English EOT`` (``pair_batch``) with the loss
                 on the English side only; val/loss and test/bleu (sacreBLEU of greedy or beam decoding,
                 ``translate``: the source prefilled, then ``common.decoding`` on ``PromptDecoder``)
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.data.corpus import cached_bpe, load_text
from common.data.documents import in_val, load_documents
from common.data.multi30k import bleu, load_multi30k
from common.data.synthetic import generator
from common.decoding import PromptDecoder, beam_search, greedy
from common.errors import PaperzooError
from common.models.lm import CausalLM
from common.paths import cache_dir

if TYPE_CHECKING:  # the configs live with the plan, which imports this module
    from .experiment import PretrainConfig, TargetConfig, TranslationConfig

EOT, SEP = "<|endoftext|>", "<|sep|>"  # ids 0 and 1: the end of a document / caption, and source | target


def corpus_documents(name: str, split: str) -> list[str]:
    """The documents of a pretraining corpus's split: tinyshakespeare's first 90% of characters are train (as
    common.data.corpus), the CPython files go by ``common.data.documents.in_val``."""
    if name == "tinyshakespeare":
        text = load_text(name)
        cut = int(0.9 * len(text))
        return [text[:cut] if split == "train" else text[cut:]]
    return [text for path, text in load_documents(name) if in_val(path, 0.1) == (split == "val")]


def tokenizer(c: PretrainConfig):
    """The byte-level BPE of the pretraining corpora's train documents and Multi30k's train captions (German and
    English), ``EOT`` = 0 and ``SEP`` = 1; trained once, cached under ``$PAPERZOO_CACHE/lora/``."""

    def texts() -> Iterable[str]:
        for name in c.corpora:
            for doc in corpus_documents(name, "train"):
                yield from doc.splitlines(keepends=True)
        for de, en in load_multi30k("train"):
            yield de
            yield en

    path = cache_dir() / "lora" / f"bpe{c.vocab_size}-{'+'.join(c.corpora)}+multi30k.json"
    tok = cached_bpe(path, texts, c.vocab_size, byte_level=True, special_tokens=[EOT, SEP], min_frequency=2)
    if tok.get_vocab_size() != c.vocab_size:
        raise PaperzooError(f"the corpora give a BPE of {tok.get_vocab_size()} tokens, not pretrain.vocab_size "
                            f"{c.vocab_size}; lower it")  # fmt: skip
    return tok


def token_stream(tok, documents: list[str]) -> np.ndarray:
    """The documents' token ids, each followed by EOT, as one flat int32 array."""
    eot = tok.token_to_id(EOT)
    return np.fromiter((i for enc in tok.encode_batch(documents) for i in [*enc.ids, eot]), dtype=np.int32)


def cached_stream(tok, name: str, split: str) -> np.ndarray:
    """``token_stream`` of a pretraining corpus's split, computed once per tokenizer and memory-mapped."""
    key = hashlib.sha256(tok.to_str().encode()).hexdigest()[:12]
    path = cache_dir() / "lora" / f"tokens-{key}" / f"{name}-{split}.npy"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npy")
        np.save(tmp, token_stream(tok, corpus_documents(name, split)))
        tmp.replace(path)
    return np.load(path, mmap_mode="r")


def windows(pieces: Iterable[np.ndarray]) -> dict[str, torch.Tensor]:
    """Next-token prediction on each piece of T + 1 token ids: idx = piece[:-1], targets = piece[1:], (B, T)."""
    rows = torch.from_numpy(np.stack([np.asarray(piece, dtype=np.int64) for piece in pieces]))
    return {"idx": rows[:, :-1], "targets": rows[:, 1:]}


def random_windows(ids: np.ndarray, block_size: int, n: int, g: torch.Generator) -> list[np.ndarray]:
    """``n`` pieces of ``block_size`` + 1 token ids from uniformly drawn starts in ``ids`` (the one draw)."""
    starts = torch.randint(0, len(ids) - block_size - 1, (n,), generator=g).tolist()
    return [ids[s : s + block_size + 1] for s in starts]


def mean_loss(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], device) -> float:
    """The loss per target token over all ``batches`` (targets -100 ignored)."""
    total, tokens = 0.0, 0
    for batch in batches:
        logits = model.logits(batch["idx"].to(device)).float()  # (B, T, V)
        targets = batch["targets"].to(device)
        total += F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
        ).item()
        tokens += int((targets != -100).sum())
    return total / tokens


class PretrainTask:
    """Next-token prediction on the pretraining corpora, an equal share of every batch from each (row i: a random
    window of corpus i mod n). val/loss: the mean over corpora of ``val/loss_<corpus>`` (fixed val windows)."""

    def __init__(self, c: PretrainConfig, eval_batch_size: int = 16, eval_seed: int = 1234):
        tok = tokenizer(c)
        self.streams = {
            name: {s: cached_stream(tok, name, s) for s in ("train", "val")} for name in c.corpora
        }
        self.block_size, self.eval_batches = c.block_size, c.eval_batches
        self.eval_batch_size, self.eval_seed = eval_batch_size, eval_seed

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        g, corpora = generator(seed, split, index), list(self.streams.values())
        split = "val" if split == "test" else split
        return windows(
            random_windows(corpora[i % len(corpora)][split], self.block_size, 1, g)[0]
            for i in range(batch_size)
        )

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        metrics = {}
        for name, ids in self.streams.items():
            batches = (windows(random_windows(ids["val"], self.block_size, self.eval_batch_size,
                                              generator(self.eval_seed, "val", i)))
                       for i in range(self.eval_batches))  # fmt: skip
            metrics[f"val/loss_{name}"] = mean_loss(model, batches, device)
        return {"val/loss": statistics.fmean(metrics.values()), **metrics}


class CaptionsTask:
    """Target (a): Multi30k's English captions, each followed by EOT, as one stream; random windows of
    ``block_size`` to train; val/loss and test/loss over every window of the val and test streams (an lr is
    chosen on val, the claims report test)."""

    def __init__(self, pre: PretrainConfig, c: TargetConfig):
        tok = tokenizer(pre)
        self.stream = {
            split: token_stream(tok, [en for _, en in load_multi30k(split)])
            for split in ("train", "val", "test")
        }
        self.block_size, self.eval_batch_size = c.block_size, c.eval_batch_size

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        ids = self.stream["val" if split == "test" else split]
        return windows(random_windows(ids, self.block_size, batch_size, generator(seed, split, index)))

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        T, size, metrics = self.block_size, self.eval_batch_size, {}
        for split in ("val", "test"):
            ids = self.stream[split]
            starts = list(range(0, len(ids) - T - 1, T))
            batches = (
                windows(ids[s : s + T + 1] for s in starts[i : i + size]) for i in range(0, len(starts), size)
            )
            metrics[f"{split}/loss"] = mean_loss(model, batches, device)
        return metrics


def pair_batch(
    pairs: list[tuple[list[int], list[int]]], block_size: int, sep: int, eot: int
) -> dict[str, torch.Tensor]:
    """Source / target id pairs (x, y) -> one sequence each, s = x' + [SEP] + y + [EOT] with x' the first
    block_size // 2 tokens of x, cut to block_size + 1 tokens and right-padded: idx = s[:-1], targets = s[1:] with
    the positions that predict x' (and SEP) at -100, so the loss is on y and EOT alone (position |x'| holds SEP and
    predicts y[0]); every row keeps at least block_size // 2 target tokens."""
    rows = [
        ([*x[: block_size // 2], sep, *y, eot][: block_size + 1], min(len(x), block_size // 2))
        for x, y in pairs
    ]
    width = max(len(s) for s, _ in rows) - 1
    idx = torch.full((len(rows), width), eot, dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (s, n_source) in enumerate(rows):
        s = torch.tensor(s)
        idx[i, : len(s) - 1] = s[:-1]
        targets[i, n_source : len(s) - 1] = s[n_source + 1 :]
    return {"idx": idx, "targets": targets}


@torch.no_grad()
def translate(model: CausalLM, tok, sources: list[str], block_size: int, max_new_tokens: int, beam_size: int = 1,
              batch_size: int = 64) -> list[str]:  # fmt: skip
    """Detokenised continuations of ``source <SEP>``: prompts of one length decode together (no padding)."""
    sep, eot = tok.token_to_id(SEP), tok.token_to_id(EOT)
    device = model.embed.weight.device
    ids = [enc.ids[: block_size // 2] for enc in tok.encode_batch(sources)]  # as pair_batch
    by_length: dict[int, list[int]] = {}
    for i, x in enumerate(ids):
        by_length.setdefault(len(x), []).append(i)
    out = [""] * len(ids)
    for length, members in by_length.items():
        decoder = PromptDecoder(model, min(max_new_tokens, block_size - length))
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            prompts = torch.tensor([ids[i] for i in chunk], device=device)
            if beam_size == 1:
                hyps = greedy(decoder, prompts, sep, eot)
            else:
                hyps = [
                    n_best[0][0] for n_best in beam_search(decoder, prompts, sep, eot, beam_size, n_best=1)
                ]
            for i, hyp in zip(chunk, hyps):
                out[i] = tok.decode(hyp).strip()
    return out


class TranslationTask:
    """Target (b): Multi30k de->en as ``German SEP English EOT`` (``pair_batch``), random pairs to train; val/loss
    on the English side of every val pair, test/bleu: sacreBLEU (13a) of the decoded test sentences."""

    def __init__(self, pre: PretrainConfig, c: TranslationConfig):
        self.tok = tok = tokenizer(pre)
        self.sep, self.eot = tok.token_to_id(SEP), tok.token_to_id(EOT)
        self.pairs = {}
        for split in ("train", "val"):
            pairs = load_multi30k(split)
            de, en = (tok.encode_batch([p[k] for p in pairs]) for k in (0, 1))
            self.pairs[split] = [(x.ids, y.ids) for x, y in zip(de, en)]
        self.test = load_multi30k("test")[: c.bleu_sentences]
        self.c = c

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        pairs = self.pairs["val" if split == "test" else split]
        picks = torch.randint(0, len(pairs), (batch_size,), generator=generator(seed, split, index)).tolist()
        return pair_batch([pairs[i] for i in picks], self.c.block_size, self.sep, self.eot)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        val, size = self.pairs["val"], self.c.eval_batch_size
        batches = (
            pair_batch(val[i : i + size], self.c.block_size, self.sep, self.eot)
            for i in range(0, len(val), size)
        )
        hyps = translate(model, self.tok, [de for de, _ in self.test], self.c.block_size, self.c.max_new_tokens,
                         self.c.beam_size, size)  # fmt: skip
        return {
            "val/loss": mean_loss(model, batches, device),
            "test/bleu": bleu(hyps, [en for _, en in self.test]),
        }
