import numpy as np
import pytest
import torch

from common.data.corpus import (
    CharTokenizer,
    LanguageModelingTask,
    TokenizedCorpus,
    cached_bpe,
    fit_tokenizer,
    load_text,
    train_bpe,
)
from common.data.synthetic import (
    IGNORE_INDEX,
    CurriculumStage,
    InductionHeads,
    SelectiveCopying,
    eval_sequences,
    generator,
    induction_heads,
)
from common.errors import PaperzooError
from common.paths import data_dir

SHAKESPEARE = data_dir() / "tinyshakespeare" / "input.txt" if data_dir() else None
needs_shakespeare = pytest.mark.skipif(
    not (SHAKESPEARE and SHAKESPEARE.exists()), reason="offline data absent"
)


def test_generator_is_pure_in_seed_split_index():
    draw = lambda *key: torch.randint(0, 1000, (8,), generator=generator(*key))  # noqa: E731
    assert torch.equal(draw(0, "train", 5), draw(0, "train", 5))
    assert not torch.equal(draw(0, "train", 5), draw(1, "train", 5))
    assert not torch.equal(draw(0, "train", 5), draw(0, "val", 5))
    assert not torch.equal(draw(0, "train", 5), draw(0, "train", 6))


def _induction_facts(idx, targets, trigger=15):
    """(position of the first trigger, whether the target is the token after it) per row."""
    first = (idx[:, :-1] == trigger).int().argmax(1)
    after = idx[torch.arange(idx.shape[0]), first + 1]
    return first, torch.equal(after, targets[:, -1])


def test_induction_heads_examples_and_the_curriculum():
    idx, targets = induction_heads(generator(0, "train", 0), 256, 40)
    first, consistent = _induction_facts(idx, targets)
    assert consistent and (idx[:, :-1] == 15).sum(1).eq(1).all() and (idx[:, -1] == 15).all()
    assert (targets[:, :-1] == IGNORE_INDEX).all() and first.max() > 30  # anywhere up to L - 3
    near, _ = _induction_facts(*induction_heads(generator(0, "train", 0), 256, 40, first_before=5))
    assert near.max() < 5

    task = InductionHeads(
        train_len=32,
        stages=(CurriculumStage(32, 10), CurriculumStage(256, 5, first=0.25), CurriculumStage(8, 3, 4)),
    )
    short, long, tiny = (task.batch("train", i, 16, 0) for i in (9, 10, 15))
    assert short["idx"].shape == (16, 32) and long["idx"].shape == (2, 256)  # same tokens per batch
    first, consistent = _induction_facts(long["idx"], long["targets"])
    assert consistent and first.max() < 64
    assert (
        tiny["idx"].shape == task.batch("train", 99, 16, 0)["idx"].shape == (4, 8)
    )  # the last stage goes on
    assert task.batch("test", 10, 16, 0)["idx"].shape == (16, 32)  # only training batches change
    assert all("start" not in b for b in (short, long, tiny))


def test_selective_copying_curriculum_sets_the_context_of_training_batches_only():
    task = SelectiveCopying(64, n_data=4, stages=(CurriculumStage(16, 3, 8), CurriculumStage(64, 2)))
    first, second, later = (task.batch("train", i, 32, 0) for i in (2, 3, 50))
    assert first["idx"].shape == (8, 16 + 4) and second["idx"].shape == later["idx"].shape == (32, 64 + 4)
    assert ((first["targets"] != IGNORE_INDEX).sum(1) == 4).all()  # 4 tokens to copy at every length
    assert task.batch("test", 2, 32, 0)["idx"].shape == (32, 64 + 4)  # tested at n_ctx
    plain = SelectiveCopying(64, n_data=4)
    assert torch.equal(plain.batch("train", 3, 32, 0)["idx"], second["idx"])  # the same data once at n_ctx


def test_shifted_curriculum_stage_places_sequences_within_the_training_length():
    task = InductionHeads(
        train_len=32, stages=(CurriculumStage(8, 5, 64, shift=True), CurriculumStage(32, 5, shift=True))
    )
    short, full = task.batch("train", 0, 16, 0), task.batch("train", 5, 16, 0)
    assert short["idx"].shape == (64, 8) and short["start"].shape == (64,)
    assert short["start"].min() == 0 and short["start"].max() == 32 - 8  # every start, none past the end
    assert (full["start"] == 0).all()  # a stage as long as train_len has nowhere to move
    assert torch.equal(task.batch("train", 0, 16, 0)["start"], short["start"])  # deterministic


def test_induction_evaluation_tests_at_least_min_test_size_sequences_at_long_lengths():
    class Counting(torch.nn.Module):  # predicts token 0 and counts the sequences it is shown at each length
        def __init__(self):
            super().__init__()
            self.seen = {}

        def logits(self, idx, start=0):
            self.seen[idx.shape[1]] = self.seen.get(idx.shape[1], 0) + idx.shape[0]
            return torch.zeros(*idx.shape, 16)

    task = InductionHeads(
        train_len=32, test_lengths=(32, 1024), test_size=256, max_eval_tokens=2048, min_test_size=8
    )
    model = Counting()
    metrics = task.evaluate(model, "cpu")
    assert model.seen == {32: 128, 1024: 8}  # 2 slices of 2048 tokens at 32; 8 slices of 1 sequence at 1024
    assert (metrics["n/acc/L32"], metrics["n/acc/L1024"]) == (
        128,
        8,
    )  # one trial per sequence, for the report
    assert eval_sequences(1024, 256, 2048, floor=8) == 8 and eval_sequences(1024, 256, 2048) == 16


def test_char_tokenizer_round_trip():
    tok = CharTokenizer.fit("hello world")
    assert tok.vocab_size == 8 and tok.decode(tok.encode("world hello")) == "world hello"


def test_bpe_tokenizer_trains_locally_and_round_trips():
    text = "the quick brown fox jumps over the lazy dog\n" * 200
    tok = fit_tokenizer("bpe:300", text)
    ids = tok.encode("the lazy fox")
    assert tok.decode(ids) == "the lazy fox" and len(ids) < len("the lazy fox")


def test_byte_level_train_bpe_is_the_tokenizers_library_byte_level_bpe():
    """bpe:<size> corpora were tokenized with ByteLevelBPETokenizer: the same model, so cached ids stay valid."""
    from tokenizers import ByteLevelBPETokenizer

    lines = (
        "the quick brown fox jumps over the lazy dog\n" * 50 + "Zwei Hunde spielen im Schnee.\n" * 30
    ).splitlines(keepends=True)
    reference = ByteLevelBPETokenizer()
    reference.train_from_iterator(lines, vocab_size=300, min_frequency=2, show_progress=False)
    ours = train_bpe(lines, 300, byte_level=True, min_frequency=2)
    assert ours.to_str() == reference._tokenizer.to_str()


def test_cached_bpe_trains_once(tmp_path):
    calls = []

    def texts():
        calls.append(1)
        return ["a man rides a bike", "two dogs play in the snow"] * 5

    first = cached_bpe(tmp_path / "bpe.json", texts, 60, special_tokens=["<pad>", "<unk>"], unk_token="<unk>")
    again = cached_bpe(tmp_path / "bpe.json", texts, 60, special_tokens=["<pad>", "<unk>"], unk_token="<unk>")
    assert len(calls) == 1 and again.to_str() == first.to_str()
    assert first.token_to_id("<pad>") == 0 and first.decode(first.encode("two dogs").ids) == "two dogs"


def test_unknown_tokenizer_and_corpus():
    with pytest.raises(PaperzooError, match="unknown tokenizer 'wordpiece'"):
        fit_tokenizer("wordpiece", "abc")
    with pytest.raises(PaperzooError, match="unknown corpus 'nope'"):
        load_text("nope")


def test_missing_corpus_offline_names_the_file_and_the_variable(lab, monkeypatch):
    monkeypatch.setenv("PAPERZOO_DATA", str(lab / "empty"))
    with pytest.raises(PaperzooError) as err:
        load_text("tinyshakespeare")
    message = str(err.value)
    assert "tinyshakespeare/input.txt" in message and "PAPERZOO_DATA" in message and "offline" in message


def test_local_text_file_is_tokenized_once_and_memory_mapped(lab):
    corpus = lab / "tiny.txt"
    corpus.write_text("abcdefghij" * 100)
    first = TokenizedCorpus(str(corpus))
    assert isinstance(first.ids, np.memmap) and first.vocab_size == 10 and len(first.ids) == 1000
    corpus.write_text("zzzz")  # the cache, not the file, is read the second time
    second = TokenizedCorpus(str(corpus))
    assert np.array_equal(np.asarray(first.ids), np.asarray(second.ids))
    assert len(second.splits["train"]) == 900 and len(second.splits["val"]) == 100


@needs_shakespeare
def test_tinyshakespeare_resolves_offline_from_the_shared_folder(lab):
    task = LanguageModelingTask("tinyshakespeare", "char", block_size=32)
    assert task.vocab_size == 65 and len(task.data.ids) == 1_115_394
    a, b = task.batch("train", 3, 4, seed=0), task.batch("train", 3, 4, seed=0)
    assert torch.equal(a["idx"], b["idx"]) and torch.equal(a["idx"][:, 1:], a["targets"][:, :-1])
    assert task.data.tokenizer.decode(task.data.ids[:14]) == "First Citizen:"
