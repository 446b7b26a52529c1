"""The reference training loop (Trainer), its config, run directories and data parallelism.

prunus' methods plug into any loop; this one adds resumable run directories, progress and DDP.
"""
