"""``common.train`` tasks for the Transformer: the copy task and Multi30k de->en translation.

Both satisfy the Task contract: ``batch(split, index, batch_size, seed)`` is a pure function of
(seed, split, index), and ``evaluate(model, device)`` returns metrics

    CopyTask      val/loss, test/exact_match  (greedy decoding of unseen sequences)
    Multi30kTask  val/loss (label-smoothed, the training objective), val/nll, val/ppl,
                  test/bleu (beam search, Sec. 6.1; sacreBLEU on detokenised output)
    WMT14Task     the same metrics on WMT 2014 (Table 2): val newstest2013, test newstest2014

Batches: {"src": (B, S), "tgt_in": (B, T), "tgt_out": (B, T)} padded with id 0 (see data.py).
"""

from __future__ import annotations

import math

import torch

from common.data.multi30k import bleu, load_multi30k
from common.decoding import greedy
from papers.transformer.data import (
    BOS_ID,
    COPY_LENGTH,
    COPY_VOCAB,
    EOS_ID,
    PAD_ID,
    collate,
    copy_task_batch,
    encode_packed,
    encode_pairs,
    load_wmt14,
    multi30k_bpe,
    translation_batch,
    wmt14_bpe,
)
from papers.transformer.decode import TransformerDecoder, translate
from papers.transformer.model import Transformer, label_smoothed_cross_entropy


def target_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The tokens the loss is computed on (``tokens_per_s`` of common.train): ``tgt_out`` without padding."""
    return int((batch["tgt_out"] != PAD_ID).sum())


class CopyTask:
    """Copy ``length`` random symbols; vocab_size counts the 3 specials (Annotated Transformer: 11, 10)."""

    def __init__(
        self, vocab_size: int = COPY_VOCAB, length: int = COPY_LENGTH, test_size: int = 200, seed: int = 0
    ):
        self.vocab_size, self.length, self.test_size, self.seed = vocab_size, length, test_size, seed

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        return copy_task_batch(index, batch_size, seed, self.vocab_size, self.length, split=split)

    def target_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return target_tokens(batch)

    def evaluate(self, model: Transformer, device: torch.device) -> dict[str, float]:
        val = {k: v.to(device) for k, v in self.batch("val", 0, self.test_size, self.seed).items()}
        test = self.batch("test", 0, self.test_size, self.seed)["src"]
        hyps = greedy(TransformerDecoder(model, max_len=self.length + 1), test.to(device), BOS_ID, EOS_ID)
        exact = sum(h == x for h, x in zip(hyps, test.tolist())) / len(hyps)
        return {"val/loss": model(val).item(), "test/exact_match": exact}


class Multi30kTask:
    """Multi30k task 1 de->en with a joint BPE vocabulary (``vocab_size`` includes the 4 specials)."""

    def __init__(
        self,
        vocab_size: int = 8000,
        beam_size: int = 4,
        alpha: float = 0.6,
        eval_batch_size: int = 64,
        bleu_sentences: int | None = None,
        bucket: int = 0,
    ):
        self.tokenizer = multi30k_bpe(vocab_size)
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.examples = {
            split: encode_pairs(self.tokenizer, load_multi30k(split)) for split in ("train", "val")
        }
        self.test = load_multi30k("test")[:bleu_sentences]
        self.beam_size, self.alpha, self.eval_batch_size = beam_size, alpha, eval_batch_size
        self.bucket = bucket  # > 1: batch pairs of similar length together (see data.translation_batch)

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        examples = self.examples["val" if split == "test" else split]
        return translation_batch(examples, index, batch_size, seed, bucket=self.bucket)

    def target_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return target_tokens(batch)

    def evaluate(self, model: Transformer, device: torch.device) -> dict[str, float]:
        val = self.examples["val"]
        loss_sum = nll_sum = 0.0
        tokens = 0
        for start in range(0, len(val), self.eval_batch_size):
            batch = {k: v.to(device) for k, v in collate(val[start : start + self.eval_batch_size]).items()}
            n = int((batch["tgt_out"] != PAD_ID).sum())
            logits, target = (
                model.logits(batch["src"], batch["tgt_in"]),
                batch["tgt_out"],
            )  # (B, T, V), (B, T)
            eps = model.cfg.label_smoothing
            loss_sum += label_smoothed_cross_entropy(logits, target, eps, ignore_index=PAD_ID).item() * n
            nll_sum += label_smoothed_cross_entropy(logits, target, 0.0, ignore_index=PAD_ID).item() * n
            tokens += n
        sources, references = [de for de, _ in self.test], [en for _, en in self.test]
        hyps = translate(model, self.tokenizer, sources, self.beam_size, self.alpha, self.eval_batch_size)
        return {
            "val/loss": loss_sum / tokens,
            "val/nll": nll_sum / tokens,
            "val/ppl": math.exp(nll_sum / tokens),
            "test/bleu": bleu(hyps, references),
        }


class WMT14Task(Multi30kTask):
    """WMT 2014 ``source``->``target`` (Table 2: en->de, en->fr) through Hugging Face ``datasets``.

    Online only and sized for a big GPU: 4.5M EN-DE training pairs, a joint BPE of ``vocab_size``
    (the paper: about 37000), training pairs longer than ``max_tokens`` on either side dropped.
    BLEU is sacreBLEU on detokenised newstest2014, typically ~1 point below the paper's tokenised BLEU.
    """

    def __init__(
        self,
        source: str = "en",
        target: str = "de",
        vocab_size: int = 37000,
        beam_size: int = 4,
        alpha: float = 0.6,
        eval_batch_size: int = 64,
        bleu_sentences: int | None = None,
        bucket: int = 100,
        max_train_pairs: int | None = None,
        max_tokens: int | None = 128,
    ):
        self.tokenizer = wmt14_bpe(source, target, vocab_size)
        self.vocab_size = self.tokenizer.get_vocab_size()
        train = load_wmt14("train", source, target)[:max_train_pairs]
        self.examples = {
            "train": encode_packed(self.tokenizer, train, max_tokens),
            "val": encode_pairs(self.tokenizer, load_wmt14("val", source, target)),
        }
        self.test = load_wmt14("test", source, target)[:bleu_sentences]
        self.beam_size, self.alpha, self.eval_batch_size = beam_size, alpha, eval_batch_size
        self.bucket = bucket
