"""Constraint sets and their exact projections: what a weight tensor may look like after compression.

* :mod:`prunus.constraints.structures`: the eight sparsity structures (unstructured, filter, channel,
  column, pattern, block, N:M) and the rounding of pruned counts;
* :mod:`prunus.constraints.sparsity`: the Euclidean projection onto "at most k groups nonzero";
* :mod:`prunus.constraints.levels`: quantization level sets (binary, ternary, k-bit, power of two)
  and the projection onto them.

Pure tensor math: nothing here knows about models, recipes or training.
"""
