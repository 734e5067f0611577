import gzip
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from common.data.documents import DOCUMENT_CORPORA, LongDocumentTask, in_val, load_documents
from common.errors import PaperzooError
from common.paths import data_dir

REAL = data_dir() / DOCUMENT_CORPORA["cpython-stdlib"] if data_dir() else None
T = 32


def write_corpus(root, lengths):
    """A fixture cpython-stdlib under ``root``: document i is ``mod<i>.py``, a unique header then filler."""
    rng = np.random.default_rng(0)
    docs = []
    for i, n in enumerate(lengths):
        text = f"# mod{i:02d}\n" + "".join(rng.choice(list("abcdefgh \n()=:"), size=n))
        docs.append({"path": f"mod{i:02d}.py", "text": text[:n]})
    file = root / DOCUMENT_CORPORA["cpython-stdlib"]
    file.parent.mkdir(parents=True)
    with gzip.open(file, "wt", encoding="utf-8") as out:
        out.writelines(json.dumps(d) + "\n" for d in docs)
    return {d["path"]: d["text"] for d in docs}


@pytest.fixture
def corpus(lab, monkeypatch):
    """40 documents, 10 of them too short for a window of T + 1 tokens."""
    monkeypatch.setenv("PAPERZOO_DATA", str(lab / "data"))
    return write_corpus(lab / "data", [T // 2] * 10 + [T + 1 + 7 * i for i in range(30)])


def make_task(**kw):
    return LongDocumentTask(**{"block_size": T, "buckets": 4, "eval_windows": 5, "eval_batch_size": 2,
                               "val_fraction": 0.25, **kw})  # fmt: skip


def source_of(task, corpus, row_idx, row_targets):
    """The path of the document whose first T + 1 characters the window is (None if no document's)."""
    text = task.tokenizer.decode(row_idx) + task.tokenizer.decode(row_targets[-1:])
    return next((path for path, doc in corpus.items() if doc[: T + 1] == text), None)


def test_windows_are_document_starts_and_the_splits_are_disjoint(corpus):
    task = make_task()
    long_docs = [p for p, text in corpus.items() if len(text) > T]
    assert task.n_docs["train"] + task.n_docs["val"] == len(long_docs) == 30 and task.n_docs["val"] > 0
    seen = {"train": set(), "val": set()}
    for split in seen:
        for index in range(10):
            b = task.batch(split, index, 8, seed=0)
            assert b["idx"].shape == b["targets"].shape == (8, T) and b["idx"].dtype == torch.long
            assert torch.equal(b["idx"][:, 1:], b["targets"][:, :-1])
            for row_idx, row_targets in zip(b["idx"], b["targets"]):
                path = source_of(task, corpus, row_idx, row_targets)
                assert path is not None and in_val(path, 0.25) == (split == "val")
                seen[split].add(path)
    assert seen["train"] and seen["val"] and not seen["train"] & seen["val"]
    assert len(seen["val"]) == task.n_docs["val"]  # 80 draws reach every val document


def test_batches_are_pure_in_seed_split_index(corpus):
    task = make_task()
    same = task.batch("train", 3, 8, seed=0)
    assert torch.equal(same["idx"], make_task().batch("train", 3, 8, seed=0)["idx"])
    for other in [("train", 4, 0), ("train", 3, 1), ("val", 3, 0)]:
        split, index, seed = other
        assert not torch.equal(same["idx"], task.batch(split, index, 8, seed)["idx"])


def test_token_ids_are_cached_once(corpus, lab):
    first = make_task()
    (lab / "data" / DOCUMENT_CORPORA["cpython-stdlib"]).unlink()  # the cache, not the file, is read again
    second = make_task()
    assert isinstance(second.ids, np.memmap) and np.array_equal(np.asarray(first.ids), np.asarray(second.ids))
    chars = set("".join(corpus.values()))  # char: fitted on every document, val included
    assert second.eval_starts == first.eval_starts and second.vocab_size == first.vocab_size == len(chars)


def test_bpe_tokenizer(corpus):
    task = make_task(tokenizer="bpe:300", block_size=8, buckets=2)
    assert task.vocab_size <= 300 and task.n_docs["train"] > 0
    b = task.batch("train", 0, 4, seed=0)
    decoded = task.tokenizer.decode(torch.cat([b["idx"][0], b["targets"][0, -1:]]))
    assert any(text.startswith(decoded) for text in corpus.values())


class Oracle(nn.Module):
    """Logit a_t on the true next token at position t, 0 elsewhere: loss_t = log(e^a_t + V - 1) - a_t."""

    def __init__(self, task, a):
        super().__init__()
        windows = [
            torch.from_numpy(np.asarray(task.ids[s : s + T + 1], dtype=np.int64)) for s in task.eval_starts
        ]
        self.next = {tuple(w[:-1].tolist()): w[1:] for w in windows}
        self.a, self.vocab_size = a, task.vocab_size

    def logits(self, idx):  # (B, T) -> (B, T, V)
        targets = torch.stack([self.next[tuple(row.tolist())] for row in idx])
        out = torch.zeros(*idx.shape, self.vocab_size)
        return out.scatter_(2, targets[..., None], self.a.expand(idx.shape)[..., None].clone())


def test_evaluate_reports_the_loss_by_position(corpus):
    task = make_task()
    assert task.n_eval_windows == min(5, task.n_docs["val"])
    assert task.bucket_edges == [(0, 8), (8, 16), (16, 24), (24, 32)]
    a = torch.linspace(0.0, 6.0, T)
    expected = torch.log(torch.exp(a) + task.vocab_size - 1) - a  # (T,), falls with position
    metrics = task.evaluate(Oracle(task, a), torch.device("cpu"))
    assert set(metrics) == {"val/loss", "val/loss_last_minus_second_quarter"} | {
        f"val/loss_pos_L{hi}" for _, hi in task.bucket_edges
    }
    assert metrics["val/loss"] == pytest.approx(expected.mean().item(), rel=1e-5)
    buckets = [metrics[f"val/loss_pos_L{hi}"] for _, hi in task.bucket_edges]
    assert sum(buckets) / 4 == pytest.approx(metrics["val/loss"], rel=1e-6)
    assert buckets == sorted(buckets, reverse=True)
    difference = expected[24:].mean() - expected[8:16].mean()
    assert difference < 0
    assert metrics["val/loss_last_minus_second_quarter"] == pytest.approx(difference.item(), rel=1e-5)
    uniform = task.evaluate(Oracle(task, torch.zeros(T)), torch.device("cpu"))
    assert uniform["val/loss"] == pytest.approx(math.log(task.vocab_size))
    assert uniform["val/loss_last_minus_second_quarter"] == pytest.approx(0.0, abs=1e-6)


def one_line_error(match, **kw):
    with pytest.raises(PaperzooError, match=match) as err:
        make_task(**kw)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_missing_file_short_corpus_and_bad_sizes_are_one_line_errors(lab, monkeypatch):
    monkeypatch.setenv("PAPERZOO_DATA", str(lab / "data"))
    message = one_line_error("not available")
    assert DOCUMENT_CORPORA["cpython-stdlib"] in message and "PAPERZOO_DATA" in message
    write_corpus(lab / "data", [T] * 40)  # T tokens: one short of a window
    assert "block_size + 1 = 33" in one_line_error("no (train|val) document")
    one_line_error("multiple of 4", block_size=30, buckets=2)
    one_line_error("multiple of 4 and of buckets", block_size=32, buckets=3)
    with pytest.raises(PaperzooError, match="unknown document corpus"):
        load_documents("nope")


@pytest.mark.skipif(not (REAL and REAL.is_file()), reason="offline data absent")
def test_the_shared_cpython_corpus():
    docs = load_documents("cpython-stdlib")
    paths = [path for path, _ in docs]
    assert len(docs) == 601 and paths == sorted(paths) and sum(len(text) for _, text in docs) == 11_064_174
    assert 0.05 < sum(in_val(p, 0.1) for p in paths) / len(paths) < 0.15
