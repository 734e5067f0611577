"""The joint BPE of Multi30k, batches, the copy task; translation end to end on fixtures."""

import gzip

import pytest
import torch

from common.data.multi30k import load_multi30k
from common.errors import PaperzooError
from papers.transformer.data import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    PackedPairs,
    collate,
    copy_task_batch,
    detokenize,
    encode_packed,
    encode_pairs,
    joint_bpe,
    load_wmt14,
    multi30k_bpe,
    translation_batch,
)
from papers.transformer.decode import translate
from papers.transformer.model import Transformer, TransformerConfig

DE = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", "Eine Frau liest ein Buch."] * 4
EN = ["A man rides a bike.", "Two dogs play in the snow.", "A woman reads a book."] * 4


@pytest.fixture
def fixture_root(tmp_path):
    folder = tmp_path / "data" / "multi30k"
    folder.mkdir(parents=True)
    for stem in ("train", "val", "test_2016_flickr"):
        for lang, lines in (("de", DE), ("en", EN)):
            with gzip.open(folder / f"{stem}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
    return tmp_path / "data"


def test_reads_offline_files_and_builds_a_cached_joint_bpe(fixture_root, tmp_path):
    pairs = load_multi30k("train", fixture_root)
    assert pairs[:2] == [(DE[0], EN[0]), (DE[1], EN[1])] and len(pairs) == 12
    tok = multi30k_bpe(vocab_size=120, root=fixture_root, cache=tmp_path / "cache")
    assert (tmp_path / "cache" / "multi30k-bpe120.json").is_file()
    assert [tok.token_to_id(t) for t in ("<pad>", "<s>", "</s>", "<unk>")] == [0, 1, 2, 3]
    ids = encode_pairs(tok, pairs)
    assert [detokenize(tok, y) for _, y in ids] == EN  # lossless detokenisation
    assert [detokenize(tok, x) for x, _ in ids] == DE  # one vocabulary for both languages
    cached = multi30k_bpe(vocab_size=120, root=tmp_path / "nowhere", cache=tmp_path / "cache")
    assert cached.encode(EN[0]).ids == tok.encode(EN[0]).ids


def test_collate_and_batches_are_deterministic():
    examples = [([5 + i] * (1 + i % 4), [6 + i] * (2 + i % 3)) for i in range(10)]
    batch = collate(examples[:2])
    assert batch["src"].tolist() == [[5, EOS_ID, PAD_ID], [6, 6, EOS_ID]]
    assert batch["tgt_in"].tolist() == [[BOS_ID, 6, 6, PAD_ID], [BOS_ID, 7, 7, 7]]
    assert batch["tgt_out"].tolist() == [[6, 6, EOS_ID, PAD_ID], [7, 7, 7, EOS_ID]]
    a, b = translation_batch(examples, 3, 4, seed=0), translation_batch(examples, 3, 4, seed=0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    firsts = {tuple(translation_batch(examples, i, 5, seed=0)["src"][:, 0].tolist()) for i in range(2)}
    assert sorted(x for batch in firsts for x in batch) == list(range(5, 15))  # an epoch sees every pair once


def test_bucketed_batches_keep_the_epoch_and_group_lengths():
    g = torch.Generator().manual_seed(0)
    examples = [([5] * int(n), [6] * int(m)) for n, m in torch.randint(1, 40, (1000, 2), generator=g)]
    a = translation_batch(examples, 7, 20, seed=3, bucket=10)
    assert all(torch.equal(a[k], translation_batch(examples, 7, 20, seed=3, bucket=10)[k]) for k in a)
    per_epoch = len(examples) // 20
    seen, plain_pad, bucket_pad = [], 0, 0
    for index in range(per_epoch):
        batch = translation_batch(examples, index, 20, seed=3, bucket=10)
        seen += (batch["src"] != PAD_ID).sum(1).tolist()
        bucket_pad += int((batch["src"] == PAD_ID).sum())
        plain_pad += int((translation_batch(examples, index, 20, seed=3)["src"] == PAD_ID).sum())
    assert sorted(seen) == sorted(len(x) + 1 for x, _ in examples)  # every pair once (1000 = 50 x 20)
    assert bucket_pad < plain_pad / 5  # sorting within chunks of 10 batches removes most padding
    nxt = translation_batch(examples, per_epoch, 20, seed=3, bucket=10)  # the next epoch reshuffles
    assert not torch.equal(nxt["src"], translation_batch(examples, 0, 20, seed=3, bucket=10)["src"])


def test_packed_pairs_are_a_compact_list_of_pairs(tmp_path):
    tok = joint_bpe(tmp_path / "bpe.json", lambda: DE + EN, 120)
    pairs = list(zip(EN, DE))
    packed = encode_packed(tok, pairs, chunk=5)
    assert isinstance(packed, PackedPairs) and len(packed) == len(pairs)
    assert [packed[i] for i in range(len(packed))] == encode_pairs(tok, pairs)
    limit = sorted(max(len(x), len(y)) for x, y in encode_pairs(tok, pairs))[len(pairs) // 2]
    short = encode_packed(tok, pairs, max_tokens=limit)
    assert 0 < len(short) < len(pairs)
    assert all(max(len(x), len(y)) <= limit for x, y in (short[i] for i in range(len(short))))
    batch = translation_batch(packed, 1, 4, seed=0, bucket=2)
    assert batch["src"].shape[0] == 4


def test_wmt14_needs_the_hub_and_names_it(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(PaperzooError) as err:
        load_wmt14("test", "en", "de")
    assert "\n" not in str(err.value) and "wmt/wmt14" in str(err.value) and "de-en" in str(err.value)
    with pytest.raises(PaperzooError):
        load_wmt14("test", "de", "fr")


def test_copy_task_batches():
    a, b = copy_task_batch(3, 8, seed=0), copy_task_batch(3, 8, seed=0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["src"], copy_task_batch(4, 8, seed=0)["src"])
    assert not torch.equal(a["src"], copy_task_batch(3, 8, seed=1)["src"])
    assert a["src"].shape == (8, 10) and a["src"].min() >= 3 and a["src"].max() <= 10
    assert torch.equal(a["tgt_in"][:, 1:], a["src"]) and (a["tgt_in"][:, 0] == BOS_ID).all()
    assert torch.equal(a["tgt_out"][:, :-1], a["src"]) and (a["tgt_out"][:, -1] == EOS_ID).all()


def test_translate_end_to_end(fixture_root, tmp_path):
    tok = multi30k_bpe(vocab_size=120, root=fixture_root, cache=tmp_path / "cache")
    torch.manual_seed(0)
    model = Transformer(
        TransformerConfig(vocab_size=tok.get_vocab_size(), d_model=16, n_heads=2, d_ff=32, n_layers=1)
    )
    out = translate(model, tok, DE[:3], beam_size=2)
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    assert translate(model, tok, DE[:3], beam_size=1, batch_size=2) == translate(
        model, tok, DE[:3], beam_size=1
    )
