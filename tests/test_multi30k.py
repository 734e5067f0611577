"""common.data.multi30k: the offline caption pairs, a one-line error without them, and BLEU."""

import pytest

from common.data.multi30k import bleu, load_multi30k
from common.errors import PaperzooError
from common.paths import data_dir

EN = ["A man rides a bike.", "Two dogs play in the snow.", "A woman reads a book."]


@pytest.mark.skipif(
    data_dir() is None or not (data_dir() / "multi30k" / "train.de.gz").is_file(),
    reason="no offline Multi30k",
)
def test_reads_the_real_multi30k():
    sizes = {split: len(load_multi30k(split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 29000, "val": 1014, "test": 1000}
    de, en = load_multi30k("val")[0]
    assert de and en and "\n" not in de


def test_missing_files_offline_give_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(PaperzooError) as err:
        load_multi30k("train")
    message = str(err.value)
    assert "\n" not in message and "PAPERZOO_DATA" in message
    assert str(tmp_path / "multi30k" / "train.de.gz") in message


def test_bleu():
    assert bleu(EN, EN) == pytest.approx(100.0)
    assert bleu(["a completely different sentence here ."] * 3, EN) < 5
