"""RWKV-4 and RWKV-7 (Peng et al. 2023, 2025): WKV kernels, blocks, the official weights format."""
