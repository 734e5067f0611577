"""Vaswani et al. 2017, "Attention Is All You Need" (arXiv 1706.03762): the encoder-decoder Transformer.

model.py     the architecture, label-smoothed loss (Sec. 3, 5.4)
training.py  Adam + Eq. 3 learning-rate schedule, checkpoint averaging (Sec. 5.3, 6.1)
decode.py    greedy decoding, beam search with length penalty, translate (Sec. 6.1)
data.py      Multi30k de->en, joint BPE, BLEU, the copy task
bench.py     CPU throughput: GPT training, KV-cached generation, attention fast path
"""
