"""Vaswani et al. 2017, "Attention Is All You Need" (arXiv 1706.03762): the encoder-decoder Transformer.

model.py     the architecture, label-smoothed loss (Sec. 3, 5.4)
decode.py    the Decoder of common.decoding (greedy, beam search, Sec. 6.1), translate
data.py      Multi30k de->en, joint BPE, BLEU, the copy task
bench.py     CPU throughput: GPT training, KV-cached generation, attention fast path
"""
