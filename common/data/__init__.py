"""Data for every paper: text corpora (common.data.corpus) and synthetic tasks (common.data.synthetic)."""
