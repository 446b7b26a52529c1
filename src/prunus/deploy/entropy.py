"""Entropy coding of symbol streams (pruning masks, quantization codes) with an adaptive model.

A 30x pruned layer's position bitmap and its 4-bit codes are far from uniform:
a bitmap at 3% density carries H(0.03) = 0.19 bits per entry, and the codes of
magnitude-pruned weights avoid the levels near zero. Deep Compression codes them
with Huffman tables stored beside the data; for a model as small as LeNet-5 those
tables cost as much as they save. Here each stream is coded by a range coder
(``constriction``) with a *block-adaptive* frequency model instead: a block of
symbols is coded with the Krichevsky-Trofimov estimate (counts + 1/2) of every
symbol before it, and the blocks double in size. The decoder rebuilds the same
estimates from what it has decoded, so nothing but the coded words is stored, and
a stream costs its empirical entropy plus about (K - 1) log2(n) bits (K symbols,
n of them) -- a few bytes per tensor.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np

FIRST_BLOCK = 64  # symbols coded with the uniform model before the first update
MAX_BLOCK = 1 << 16  # large tensors: the model is refreshed at least every 65,536 symbols


def _blocks(n: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of each block: 64, 64, 128, 256, ... (each as long as all before it), capped."""
    start = 0
    while start < n:
        stop = min(n, start + min(MAX_BLOCK, max(FIRST_BLOCK, start)))
        yield start, stop
        start = stop


def _model(counts: np.ndarray):
    import constriction  # a compiled extension: its submodules are attributes, not importable modules

    return constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)


class StreamWriter:
    """Appends symbol streams to one range-coded bit stream; :meth:`getvalue` gives its bytes."""

    def __init__(self) -> None:
        import constriction

        self._encoder = constriction.stream.queue.RangeEncoder()
        self.crc = 0  # CRC32 of every symbol written: the reader checks it, so a decoder that rebuilds the
        # model differently (another constriction version, a bug) fails loudly instead of loading wrong weights

    def write(self, symbols: np.ndarray, alphabet: int) -> None:
        """Code ``symbols`` (integers in [0, alphabet)); a one-symbol alphabet costs nothing."""
        symbols = np.asarray(symbols, dtype=np.int32).reshape(-1)
        if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet):
            raise ValueError(f"symbols must lie in [0, {alphabet}), got {symbols.min()}..{symbols.max()}")
        self.crc = zlib.crc32(symbols.astype("<i4").tobytes(), self.crc)
        if alphabet < 2:
            return
        counts = np.full(alphabet, 0.5)
        for start, stop in _blocks(symbols.size):
            block = symbols[start:stop]
            self._encoder.encode(block, _model(counts))
            counts += np.bincount(block, minlength=alphabet)

    def num_bytes(self) -> int:
        """Bytes coded so far, to the 32-bit word."""
        return 4 * int(self._encoder.num_words())

    def getvalue(self) -> bytes:
        return self._encoder.get_compressed().astype("<u4").tobytes()


class StreamReader:
    """Reads back, in the same order, the streams a :class:`StreamWriter` wrote."""

    def __init__(self, data: bytes) -> None:
        import constriction

        if len(data) % 4:
            raise ValueError(f"a coded stream is a whole number of 32-bit words, got {len(data)} bytes")
        self._decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
        self.crc = 0  # of every symbol read, as StreamWriter.crc

    def read(self, count: int, alphabet: int) -> np.ndarray:
        out = np.zeros(count, dtype=np.int64)
        if alphabet >= 2:
            counts = np.full(alphabet, 0.5)
            for start, stop in _blocks(count):
                block = np.asarray(self._decoder.decode(_model(counts), stop - start), dtype=np.int64)
                out[start:stop] = block
                counts += np.bincount(block, minlength=alphabet)
        self.crc = zlib.crc32(out.astype("<i4").tobytes(), self.crc)
        return out

    def exhausted(self) -> bool:
        """Whether the words are used up (a stream that does not match its model is not)."""
        return bool(self._decoder.maybe_exhausted())
