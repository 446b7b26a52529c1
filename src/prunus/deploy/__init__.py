"""Deployment: physical channel removal (surgery), ONNX export, the compressed format, latency and footprint.

:mod:`prunus.deploy.allocation` chooses filter widths from measured latency before pruning.
"""
