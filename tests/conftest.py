"""Shared fixtures: models trained once per session on real (bundled) data."""

from pathlib import Path

import pytest

from prunus.train.config import TrainConfig
from prunus.train.run import train


@pytest.fixture(scope="session")
def dense_digits(tmp_path_factory) -> Path:
    """A dense LeNet-5 trained 8 epochs on scikit-learn's digits (the run directory)."""
    run = tmp_path_factory.mktemp("dense") / "lenet5-digits"
    train(TrainConfig(model="lenet5", dataset="digits", epochs=8, batch_size=32), run)
    return run
