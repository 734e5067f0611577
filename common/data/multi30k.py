"""Multi30k task 1 (Elliott et al. 2016): German-English image captions, and BLEU to score translations.

29,000 / 1,014 / 1,000 caption pairs (train / val / test_2016_flickr), read from
``$PAPERZOO_DATA/multi30k/{train,val,test_2016_flickr}.{de,en}.gz`` or, when those are missing and the
machine is online, from the hub dataset ``bentrevett/multi30k``. Used by the Transformer (de->en with an
encoder-decoder) and LoRA (a decoder-only GPT adapted to the captions and to de->en).

BLEU: ``sacrebleu.corpus_bleu`` (13a tokenisation) of detokenised hypotheses against the raw references.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from common.data.corpus import offline
from common.errors import PaperzooError
from common.paths import data_dir

SPLIT_FILES = {"train": "train", "val": "val", "test": "test_2016_flickr"}
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}
HUB_DATASET = "bentrevett/multi30k"


def _read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f]


def load_multi30k(split: str, root: Path | None = None) -> list[tuple[str, str]]:
    """(German, English) sentence pairs of ``split`` in {"train", "val", "test"}."""
    if split not in SPLIT_FILES:
        raise PaperzooError(f"unknown Multi30k split '{split}'; choose train, val or test")
    root = root if root is not None else data_dir()
    folder = (root if root else Path("$PAPERZOO_DATA")) / "multi30k"
    de_path, en_path = (folder / f"{SPLIT_FILES[split]}.{lang}.gz" for lang in ("de", "en"))
    if de_path.is_file() and en_path.is_file():
        de, en = _read_lines(de_path), _read_lines(en_path)
        if len(de) != len(en):
            raise PaperzooError(f"{de_path} has {len(de)} lines but {en_path} has {len(en)}")
        return list(zip(de, en))
    missing = de_path if not de_path.is_file() else en_path
    if offline():
        raise PaperzooError(
            f"Multi30k is not available offline: expected {missing}; "
            "set PAPERZOO_DATA to the folder holding multi30k/"
        )
    import datasets

    datasets.disable_progress_bars()
    rows = datasets.load_dataset(HUB_DATASET, split=HUB_SPLITS[split])
    return [(de.strip(), en.strip()) for de, en in zip(rows["de"], rows["en"])]


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu, 13a tokenisation) of detokenised hypotheses against one reference each."""
    import sacrebleu

    return sacrebleu.corpus_bleu(hypotheses, [references]).score
