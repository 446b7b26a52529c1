"""A complex-valued signal dataset that prunus generates itself: radio modulation classification.

Each example is one frame of complex baseband samples of one of eleven modulations
(:data:`MODULATIONS`), sent through a random channel (:class:`ChannelConfig`):

1. **Source.** Random symbols (uniform over the constellation), ``samples_per_symbol = 8``.
   Linear modulations (BPSK, QPSK, 8PSK, 16QAM, 64QAM, 16APSK, PAM4) are shaped with a
   root-raised-cosine pulse (roll-off 0.35, 8 symbols span); OQPSK delays its quadrature by half
   a symbol; GFSK (binary, BT = 0.3, h = 0.5) and CPFSK (4-ary, rectangular, h = 0.25) are
   continuous-phase FM; AM-DSB is ``1 + 0.5 m(t)`` with a random low-pass message ``m``.
   A random timing offset (0..7 samples) picks where the frame starts.
2. **Multipath.** A random FIR channel of ``multipath_taps`` complex Gaussian taps with an
   exponential power-delay profile (decay 1.5 taps), normalised to unit energy.
3. **Carrier offsets.** A frequency offset uniform in ``[-max_cfo, max_cfo]`` cycles per sample
   and a phase offset uniform in ``[0, 2 pi)``.
4. **Noise.** The frame is scaled to unit mean power, then complex white Gaussian noise of
   variance ``10^(-snr/10)`` is added, with ``snr`` (dB) uniform in ``snr_db``: the SNR is the
   ratio of mean signal power to mean noise power per complex sample.

**Determinism.** Everything is drawn from ``numpy.random.default_rng`` seeded with
``(seed, split, class index)``: the same seed gives the same bytes on every machine, the
splits never share a frame, and every class has exactly ``per_class`` frames (then a seeded
shuffle).  **Layout.** The registered dataset ``modulation`` holds frames of 1024 samples as
images of 2 x 32 x 32: channel 0 the real part, channel 1 the imaginary part, each the frame
written row by row (sample ``n`` at row ``n // 32``, column ``n % 32``), so a row is 32
consecutive samples and a column steps by 32 samples.  Train: 1000 frames per class; test: 300.
Splits are generated on first use (a few seconds on one core) and kept in memory.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MODULATIONS", "ChannelConfig", "generate", "load_modulation_split", "to_images"]

MODULATIONS: tuple[str, ...] = ("bpsk", "qpsk", "8psk", "oqpsk", "16qam", "64qam", "16apsk", "pam4", "gfsk", "cpfsk",
                                "am-dsb")
SPLIT_IDS = {"train": 0, "test": 1}
#: frames per class of the registered splits
SPLIT_SIZES = {"train": 1000, "test": 300}
IMAGE_SIZE = 32


@dataclass(frozen=True)
class ChannelConfig:
    """How frames are made; the defaults are those of the registered ``modulation`` dataset."""

    frame_length: int = IMAGE_SIZE * IMAGE_SIZE
    samples_per_symbol: int = 8
    snr_db: tuple[float, float] = (-4.0, 20.0)
    max_cfo: float = 0.01  # cycles per sample
    multipath_taps: int = 3  # 1 = no multipath
    rolloff: float = 0.35


def _constellation(name: str) -> np.ndarray:
    """Unit-mean-power constellation points of a linear modulation."""
    if name == "bpsk":
        pts = np.array([1, -1], dtype=complex)
    elif name in ("qpsk", "oqpsk"):
        pts = np.exp(1j * (np.pi / 4 + np.pi / 2 * np.arange(4)))
    elif name == "8psk":
        pts = np.exp(1j * np.pi / 4 * np.arange(8))
    elif name in ("16qam", "64qam"):
        m = int(math.isqrt(int(name[:-3])))
        levels = np.arange(-(m - 1), m, 2, dtype=float)
        pts = (levels[:, None] + 1j * levels[None, :]).ravel()
    elif name == "16apsk":  # DVB-S2 4+12 APSK, ring ratio 2.6
        pts = np.concatenate([np.exp(1j * (np.pi / 4 + np.pi / 2 * np.arange(4))),
                              2.6 * np.exp(1j * (np.pi / 12 + np.pi / 6 * np.arange(12)))])
    elif name == "pam4":
        pts = np.array([-3, -1, 1, 3], dtype=complex)
    else:
        raise ValueError(name)
    return pts / np.sqrt(np.mean(np.abs(pts) ** 2))


def rrc_taps(rolloff: float, sps: int, span: int) -> np.ndarray:
    """Root-raised-cosine impulse response (unit energy), ``span`` symbols long."""
    t = np.arange(-span * sps // 2, span * sps // 2 + 1) / sps
    b = rolloff
    h = np.empty_like(t)
    for i, ti in enumerate(t):
        if abs(ti) < 1e-12:
            h[i] = 1 - b + 4 * b / np.pi
        elif b > 0 and abs(abs(ti) - 1 / (4 * b)) < 1e-9:
            a = np.pi / (4 * b)
            h[i] = b / np.sqrt(2) * ((1 + 2 / np.pi) * np.sin(a) + (1 - 2 / np.pi) * np.cos(a))
        else:
            h[i] = (np.sin(np.pi * ti * (1 - b)) + 4 * b * ti * np.cos(np.pi * ti * (1 + b))) / (
                np.pi * ti * (1 - (4 * b * ti) ** 2))
    return h / np.sqrt(np.sum(h ** 2))


def _filter(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Full linear convolution of every row of ``x`` with ``h`` (FFT)."""
    n = x.shape[1] + len(h) - 1
    nfft = 1 << (n - 1).bit_length()
    return np.fft.ifft(np.fft.fft(x, nfft, axis=1) * np.fft.fft(h, nfft), axis=1)[:, :n]


def _upsample(symbols: np.ndarray, sps: int) -> np.ndarray:
    out = np.zeros((symbols.shape[0], symbols.shape[1] * sps), dtype=complex)
    out[:, ::sps] = symbols
    return out


def _baseband(name: str, n: int, length: int, cfg: ChannelConfig, rng: np.random.Generator) -> np.ndarray:
    """``n`` noiseless frames of ``length`` samples (complex128), before the channel."""
    sps, span = cfg.samples_per_symbol, 8
    nsym = length // sps + 2 * span + 2
    if name in ("gfsk", "cpfsk"):
        levels, h_index = (np.array([-1.0, 1.0]), 0.5) if name == "gfsk" else (np.array([-3.0, -1.0, 1.0, 3.0]), 0.25)
        freq = np.repeat(levels[rng.integers(0, len(levels), (n, nsym))], sps, axis=1)
        if name == "gfsk":  # Gaussian pulse, BT = 0.3, 4 symbols span, unit DC gain
            bt = 0.3
            t = np.arange(-2 * sps, 2 * sps + 1) / sps
            g = np.exp(-2 * (np.pi * bt) ** 2 * t ** 2 / np.log(2))
            freq = _filter(freq, g / g.sum()).real[:, 2 * sps: 2 * sps + freq.shape[1]]
        phase = np.pi * h_index * np.cumsum(freq, axis=1) / sps
        wave = np.exp(1j * phase)
    elif name == "am-dsb":
        noise = rng.standard_normal((n, nsym * sps))
        win = 4 * sps
        msg = _filter(noise, np.ones(win) / win).real[:, win: win + nsym * sps]
        msg /= np.maximum(np.abs(msg).max(axis=1, keepdims=True), 1e-12)
        wave = (1.0 + 0.5 * msg).astype(complex)
    else:
        pts = _constellation(name)
        symbols = pts[rng.integers(0, len(pts), (n, nsym))]
        rrc = rrc_taps(cfg.rolloff, sps, span)
        if name == "oqpsk":
            i_part = _filter(_upsample(symbols.real.astype(complex), sps), rrc)
            q_part = _filter(_upsample(symbols.imag.astype(complex), sps), rrc)
            q_part = np.roll(q_part, sps // 2, axis=1)
            wave = i_part.real + 1j * q_part.real
        else:
            wave = _filter(_upsample(symbols, sps), rrc)
    start = span * sps + rng.integers(0, sps, n)  # skip the filter transient; random timing offset
    idx = start[:, None] + np.arange(length)[None, :]
    return np.take_along_axis(wave, idx, axis=1)


def generate(modulation: str, n: int, rng: np.random.Generator, config: ChannelConfig = ChannelConfig(),
             return_clean: bool = False):
    """``n`` received frames of one modulation: ``(frames complex64 (n, L), snr_db float32 (n,))``.

    With ``return_clean`` also the noiseless received frames (after multipath and carrier offsets,
    at unit power), so that ``frames - clean`` is exactly the added noise.
    """
    if modulation not in MODULATIONS:
        raise ValueError(f"unknown modulation {modulation!r}; choose from {', '.join(MODULATIONS)}")
    cfg = config
    taps = max(int(cfg.multipath_taps), 1)
    x = _baseband(modulation, n, cfg.frame_length + taps - 1, cfg, rng)
    if taps > 1:
        profile = np.exp(-np.arange(taps) / 1.5)
        h = (rng.standard_normal((n, taps)) + 1j * rng.standard_normal((n, taps))) * np.sqrt(profile / 2)
        h /= np.sqrt(np.sum(np.abs(h) ** 2, axis=1, keepdims=True))
        y = sum(h[:, k: k + 1] * x[:, taps - 1 - k: taps - 1 - k + cfg.frame_length] for k in range(taps))
    else:
        y = x
    t = np.arange(cfg.frame_length)[None, :]
    cfo = rng.uniform(-cfg.max_cfo, cfg.max_cfo, (n, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    y = y * np.exp(1j * (2 * np.pi * cfo * t + phase))
    y /= np.sqrt(np.mean(np.abs(y) ** 2, axis=1, keepdims=True))
    snr = rng.uniform(cfg.snr_db[0], cfg.snr_db[1], n)
    sigma = np.sqrt(10.0 ** (-snr / 10.0) / 2.0)[:, None]
    noise = sigma * (rng.standard_normal(y.shape) + 1j * rng.standard_normal(y.shape))
    frames = (y + noise).astype(np.complex64)
    if return_clean:
        return frames, snr.astype(np.float32), y.astype(np.complex64)
    return frames, snr.astype(np.float32)


def generate_split(per_class: int, seed: int, split: int, config: ChannelConfig = ChannelConfig(),
                   modulations: tuple[str, ...] = MODULATIONS):
    """``per_class`` frames of every modulation, shuffled: ``(frames (N, L) complex64, labels int64, snr float32)``."""
    frames, labels, snrs = [], [], []
    for k, name in enumerate(modulations):
        rng = np.random.default_rng([seed, split, k])
        f, s = generate(name, per_class, rng, config)
        frames.append(f)
        snrs.append(s)
        labels.append(np.full(per_class, k, dtype=np.int64))
    order = np.random.default_rng([seed, split, len(modulations)]).permutation(per_class * len(modulations))
    return np.concatenate(frames)[order], np.concatenate(labels)[order], np.concatenate(snrs)[order]


def to_images(frames: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Complex frames ``(N, size*size)`` as float32 images ``(N, 2, size, size)``: [real; imag], row by row."""
    n = frames.shape[0]
    out = np.empty((n, 2, size, size), dtype=np.float32)
    out[:, 0] = frames.real.reshape(n, size, size)
    out[:, 1] = frames.imag.reshape(n, size, size)
    return out


@functools.lru_cache(maxsize=4)
def _cached_split(split: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    frames, labels, _ = generate_split(per_class, seed, SPLIT_IDS[split])
    images = to_images(frames)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_modulation_split(split: str, per_class: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The registered split as ``(images float32 (N, 2, 32, 32), labels int64)``; fresh, writable copies."""
    images, labels = _cached_split(split, SPLIT_SIZES[split] if per_class is None else int(per_class), int(seed))
    return images.copy(), labels.copy()
