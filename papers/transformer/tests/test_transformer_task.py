"""The common.train tasks: determinism, metrics, and a few steps through the shared loop."""

import gzip
import math

import pytest
import torch

from common.config import Optimizer, Schedule, TrainConfig
from common.train import train
from papers.transformer import data
from papers.transformer.data import PackedPairs, detokenize
from papers.transformer.model import Transformer, TransformerConfig
from papers.transformer.task import CopyTask, Multi30kTask, WMT14Task

DE = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", "Eine Frau liest ein Buch."] * 3
EN = ["A man rides a bike.", "Two dogs play in the snow.", "A woman reads a book."] * 3


def _tiny(vocab_size):
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=vocab_size, d_model=16, n_heads=2, d_ff=32, n_layers=1))


def test_copy_task_through_the_shared_loop(tmp_path):
    task = CopyTask(test_size=16)
    a, b = task.batch("train", 5, 4, seed=0), task.batch("train", 5, 4, seed=0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["src"], task.batch("val", 5, 4, seed=0)["src"])
    cfg = TrainConfig(max_steps=10, batch_size=8, optimizer=Optimizer.adam, schedule=Schedule.noam, lr=1.0,
                      warmup_steps=5, noam_d_model=16, beta2=0.98, eps=1e-9, weight_decay=0.0, ckpt_every=0,
                      log_every=5, device="cpu")  # fmt: skip
    result = train(_tiny(11), task, cfg, ckpt_path=tmp_path / "ckpt.pt", progress=False)
    assert set(result.metrics) == {"val/loss", "test/exact_match"}
    assert 0.0 <= result.metrics["test/exact_match"] <= 1.0


def test_multi30k_task_on_fixture_files(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "multi30k"
    folder.mkdir(parents=True)
    for stem in ("train", "val", "test_2016_flickr"):
        for lang, lines in (("de", DE), ("en", EN)):
            with gzip.open(folder / f"{stem}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("PAPERZOO_CACHE", str(tmp_path / "cache"))
    task = Multi30kTask(vocab_size=100, beam_size=2, bleu_sentences=3)
    batch = task.batch("train", 0, 4, seed=0)
    assert set(batch) == {"src", "tgt_in", "tgt_out"} and batch["src"].shape[0] == 4
    metrics = task.evaluate(_tiny(task.vocab_size).eval(), torch.device("cpu"))
    assert set(metrics) == {"val/loss", "val/nll", "val/ppl", "test/bleu"}
    assert metrics["val/loss"] > 0 and metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/nll"]))
    assert 0.0 <= metrics["test/bleu"] <= 100.0


def test_wmt14_task_with_a_stand_in_for_the_hub(tmp_path, monkeypatch):
    """WMT14Task end to end, with ``datasets`` replaced by a few rows (the real one is 4.5M pairs online)."""
    asked = []

    def rows(config, split):
        asked.append((config, split))
        return [{"de": de, "en": en} for de, en in zip(DE, EN)]

    monkeypatch.setattr(data, "_wmt14_rows", rows)
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PAPERZOO_CACHE", str(tmp_path / "cache"))
    task = WMT14Task("en", "de", vocab_size=100, beam_size=2, bleu_sentences=3, max_tokens=64)
    assert ("de-en", "train") in asked and ("de-en", "validation") in asked and ("de-en", "test") in asked
    assert (tmp_path / "cache" / "transformer" / "wmt14-de-en-bpe100.json").is_file()
    assert isinstance(task.examples["train"], PackedPairs) and len(task.examples["train"]) == len(EN)
    x, y = task.examples["train"][0]
    assert (detokenize(task.tokenizer, x), detokenize(task.tokenizer, y)) == (EN[0], DE[0])  # en -> de
    assert task.test[0] == (EN[0], DE[0])
    assert task.batch("train", 0, 4, seed=0)["src"].shape[0] == 4
    metrics = task.evaluate(_tiny(task.vocab_size).eval(), torch.device("cpu"))
    assert set(metrics) == {"val/loss", "val/nll", "val/ppl", "test/bleu"}
