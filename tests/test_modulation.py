"""The generated radio-modulation dataset: balance, determinism, SNR, layout, learnability."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from rich.console import Console

from prunus.data import DATASETS, ArrayDataset, load_dataset
from prunus.data.modulation import MODULATIONS, ChannelConfig, generate, generate_split, to_images


def test_registered_and_documented_modulations():
    assert {"bpsk", "qpsk", "8psk", "16qam", "64qam", "pam4", "gfsk", "cpfsk"} <= set(MODULATIONS)
    assert len(MODULATIONS) == 11 == DATASETS["modulation"].num_classes
    spec = DATASETS["modulation"]
    assert (spec.in_channels, spec.image_size, spec.format) == (2, 32, "generated")


def test_exact_class_balance_and_shuffled_order():
    frames, labels, snr = generate_split(20, seed=3, split=0)
    assert frames.shape == (220, 1024) and frames.dtype == np.complex64
    assert np.bincount(labels, minlength=11).tolist() == [20] * 11
    assert not np.all(np.diff(labels) >= 0)  # shuffled, not sorted by class
    assert snr.min() >= -4.0 and snr.max() <= 20.0


def test_same_seed_same_bytes_other_seed_or_split_differs():
    a = generate_split(5, seed=11, split=0)
    b = generate_split(5, seed=11, split=0)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    assert a[0].tobytes() != generate_split(5, seed=12, split=0)[0].tobytes()
    assert a[0].tobytes() != generate_split(5, seed=11, split=1)[0].tobytes()


@pytest.mark.parametrize("modulation", MODULATIONS)
def test_measured_snr_matches_the_requested_one(modulation):
    rng = np.random.default_rng(5)
    frames, snr, clean = generate(modulation, 40, rng, ChannelConfig(snr_db=(-5.0, 25.0)), return_clean=True)
    noise = frames.astype(np.complex128) - clean
    measured = 10 * np.log10(np.mean(np.abs(clean) ** 2, 1) / np.mean(np.abs(noise) ** 2, 1))
    assert np.allclose(np.mean(np.abs(clean) ** 2, 1), 1.0, atol=1e-5)  # unit signal power per frame
    assert np.max(np.abs(measured - snr)) < 0.6  # 1024 noise samples: ~0.14 dB standard error
    assert abs(np.mean(measured - snr)) < 0.15


def test_channel_impairments_act():
    rng = lambda: np.random.default_rng(9)  # noqa: E731
    ideal = ChannelConfig(snr_db=(200.0, 200.0), max_cfo=0.0, multipath_taps=1)
    f0, _ = generate("bpsk", 4, rng(), ideal)
    # without impairments a BPSK frame (after the random phase) lies on one line through the origin
    rotated = f0 * np.exp(-1j * np.angle(np.sum(f0 ** 2, 1, keepdims=True)) / 2)
    assert np.max(np.abs(rotated.imag)) < 1e-3
    f1, _ = generate("bpsk", 4, rng(), ChannelConfig(snr_db=(200.0, 200.0), max_cfo=0.01, multipath_taps=1))
    r1 = f1 * np.exp(-1j * np.angle(np.sum(f1 ** 2, 1, keepdims=True)) / 2)
    assert np.max(np.abs(r1.imag)) > 0.1  # a frequency offset rotates the constellation along the frame
    with pytest.raises(ValueError, match="unknown modulation"):
        generate("ofdm", 1, rng())


def test_images_layout_and_load_dataset_offline():
    frames, labels, _ = generate_split(2, seed=0, split=1)
    images = to_images(frames)
    assert images.shape == (22, 2, 32, 32) and images.dtype == np.float32
    assert images[3, 0, 1, 5] == frames[3, 32 + 5].real and images[3, 1, 31, 31] == frames[3, 1023].imag
    test = load_dataset("modulation", "test")
    assert isinstance(test, ArrayDataset) and tuple(test.images.shape) == (3300, 2, 32, 32)
    assert torch.bincount(test.labels).tolist() == [300] * 11
    again = load_dataset("modulation", "test")  # cached generation, fresh tensors
    assert torch.equal(again.images, test.images) and again.images.data_ptr() != test.images.data_ptr()


def test_tiny_complex_classifier_beats_chance_clearly(tmp_path):
    from prunus.models import build_model
    from prunus.train.config import TrainConfig
    from prunus.train.trainer import Trainer

    config = ChannelConfig(snr_db=(10.0, 20.0))

    def split(index: int, per_class: int) -> ArrayDataset:
        frames, labels, _ = generate_split(per_class, 7, index, config)
        return ArrayDataset(torch.from_numpy(to_images(frames)), torch.from_numpy(labels), name="modulation",
                            split=("train", "test")[index], num_classes=11, mean=(0.0, 0.0), std=(1.0, 1.0))

    train, test = split(0, 60), split(1, 30)
    torch.manual_seed(0)
    model = build_model("cnin_small", in_channels=2, num_classes=11, binary=False, width=0.5)  # stacked complex input
    run = TrainConfig(epochs=6, batch_size=32, optimizer="adam", lr=3e-3, weight_decay=0.0, seed=0)
    history = Trainer(model, train, test, run, tmp_path / "run", device=torch.device("cpu"),
                      console=Console(file=io.StringIO())).fit()
    assert max(h["test_accuracy"] for h in history) > 30.0  # chance is 100/11 = 9.1%
