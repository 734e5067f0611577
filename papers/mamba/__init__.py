"""Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (arXiv 2312.00752).

ops.py         the selective scan (Eq. 2a, 2b, 4): sequential reference and chunked fast path (Sec. 3.2-3.3)
model.py       the Mamba block (Fig. 3) with its recurrent step, the Table 1 variants, the Mamba LM (Sec. 3.4)
bench.py       CPU/GPU speed of the scan (fast vs reference vs mambapy) and of recurrent generation
experiment.py  what the reproduction trains (Tables 1-2, Sec. 4.2)
"""
