"""Lewis et al. 2020, "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks" (arXiv 2005.11401).

marginal.py    RAG-Sequence (Eq. 1) and RAG-Token (Eq. 2) in log space, their NLL losses (Sec. 2.4)
knowledge.py   a synthetic knowledge base: passages, questions, splits, two index versions (Sec. 4.5)
retrieval.py   BM25 and dense MIPS retrieval (MiniLM encoders, faiss flat/HNSW), index hot-swap (Sec. 2.2, 2.4)
model.py       [x ; sep ; z] inputs, the generator (the zoo's Transformer) once per document, the loss (Sec. 2.3-2.4)
decode.py      RAG-Token beam search through common.decoding, RAG-Sequence Thorough / Fast Decoding (Sec. 2.5)

A library step: no paper.yaml, configs or experiment yet, so no reproduction is discovered.
"""
