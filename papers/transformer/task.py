"""``common.train`` tasks for the Transformer: the copy task and Multi30k de->en translation.

Both satisfy the Task contract: ``batch(split, index, batch_size, seed)`` is a pure function of
(seed, split, index), and ``evaluate(model, device)`` returns metrics

    CopyTask      val/loss, test/exact_match  (greedy decoding of unseen sequences)
    Multi30kTask  val/loss (label-smoothed, the training objective), val/nll, val/ppl,
                  test/bleu (beam search, Sec. 6.1; sacreBLEU on detokenised output)

Batches: {"src": (B, S), "tgt_in": (B, T), "tgt_out": (B, T)} padded with id 0 (see data.py).
"""

from __future__ import annotations

import math

import torch

from papers.transformer.data import (
    BOS_ID,
    COPY_LENGTH,
    COPY_VOCAB,
    EOS_ID,
    PAD_ID,
    bleu,
    collate,
    copy_task_batch,
    encode_pairs,
    load_multi30k,
    multi30k_bpe,
    translation_batch,
)
from papers.transformer.decode import greedy_decode, translate
from papers.transformer.model import Transformer, label_smoothed_cross_entropy


class CopyTask:
    """Copy ``length`` random symbols; vocab_size counts the 3 specials (Annotated Transformer: 11, 10)."""

    def __init__(
        self, vocab_size: int = COPY_VOCAB, length: int = COPY_LENGTH, test_size: int = 200, seed: int = 0
    ):
        self.vocab_size, self.length, self.test_size, self.seed = vocab_size, length, test_size, seed

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        return copy_task_batch(index, batch_size, seed, self.vocab_size, self.length, split=split)

    def evaluate(self, model: Transformer, device: torch.device) -> dict[str, float]:
        val = {k: v.to(device) for k, v in self.batch("val", 0, self.test_size, self.seed).items()}
        test = self.batch("test", 0, self.test_size, self.seed)["src"]
        hyps = greedy_decode(model, test.to(device), BOS_ID, EOS_ID, max_len=self.length + 1)
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
    ):
        self.tokenizer = multi30k_bpe(vocab_size)
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.examples = {
            split: encode_pairs(self.tokenizer, load_multi30k(split)) for split in ("train", "val")
        }
        self.test = load_multi30k("test")[:bleu_sentences]
        self.beam_size, self.alpha, self.eval_batch_size = beam_size, alpha, eval_batch_size

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        return translation_batch(self.examples["val" if split == "test" else split], index, batch_size, seed)

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
