"""Byte planes deflated where they compress and stored where they do not, in one zlib stream."""

from __future__ import annotations

import zlib

import h5py
import numpy as np
import pytest

from pyapred.io.deflate import _strategy, deflate_planes


@pytest.mark.parametrize("n_bytes", [0, 1, 5000, 65535, 65536, 200_001])
def test_any_inflater_reads_the_planes_back(n_bytes):
    rng = np.random.default_rng(n_bytes)
    planes = np.stack([
        rng.integers(0, 256, n_bytes, dtype=np.uint8),  # random: stored
        np.zeros(n_bytes, np.uint8),  # compresses
        rng.integers(0, 256, n_bytes, dtype=np.uint8),  # stored, after a compressed plane
        (np.arange(n_bytes) % 7).astype(np.uint8),
    ])  # fmt: skip
    stream = deflate_planes(planes, 4)
    assert zlib.decompress(stream) == planes.tobytes()
    inflater = zlib.decompressobj()  # a streaming inflater, in small pieces
    pieces = [inflater.decompress(stream[i : i + 999]) for i in range(0, len(stream), 999)]
    assert b"".join(pieces) + inflater.flush() == planes.tobytes() and inflater.eof


def test_random_planes_are_stored_and_the_others_compressed():
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 256, (2, 100_000), dtype=np.uint8)
    stream = deflate_planes(noisy, 4)
    assert noisy[0, :65535].tobytes() in stream and noisy[1, -1000:].tobytes() in stream
    assert len(stream) < noisy.size + 100  # stored: 5 bytes a 64 kB block, never larger
    assert len(zlib.compress(noisy.tobytes(), 4)) > noisy.size  # where zlib spent its time
    smooth = np.repeat(np.arange(200, dtype=np.uint8), 500)[None]
    assert len(deflate_planes(smooth, 4)) < 0.01 * smooth.size


def test_planes_must_be_two_dimensional_bytes():
    with pytest.raises(ValueError, match="planes"):
        deflate_planes(np.zeros(10, np.uint8), 4)
    with pytest.raises(TypeError, match="uint8"):  # a cast kept each value's low byte
        deflate_planes(np.array([[1.7, 300.0]]), 4)


def test_planes_of_runs_are_deflated_by_runs_and_the_others_searched():
    rng = np.random.default_rng(2)
    runs = np.repeat(rng.integers(0, 4, 2000, dtype=np.uint8), 50)  # an exponent plane's
    periodic = (np.arange(100_000) % 7 * 37).astype(np.uint8)  # repeats, but no runs
    random = rng.integers(0, 256, 100_000, dtype=np.uint8)
    assert _strategy(memoryview(runs)) == zlib.Z_RLE
    assert _strategy(memoryview(periodic)) == zlib.Z_DEFAULT_STRATEGY
    assert _strategy(memoryview(random)) is None
    assert _strategy(memoryview(runs[:0])) is None

    def deflated(plane, strategy):
        packer = zlib.compressobj(4, zlib.DEFLATED, -15, 8, strategy)
        return len(packer.compress(plane)) + len(packer.flush())

    # Each plane as small as its better strategy makes it (runs: 1838 bytes against 3361 by
    # search; periodic: 174 against 37 631 by runs), the stream's framing aside.
    planes = np.stack([runs, periodic])
    best = sum(min(deflated(p, s) for s in (zlib.Z_DEFAULT_STRATEGY, zlib.Z_RLE)) for p in planes)
    stream = deflate_planes(planes, 4)
    assert len(stream) <= best + 64  # the framing: 21 bytes
    assert zlib.decompress(stream) == planes.tobytes()


def test_hdf5_reads_back_a_chunk_of_every_kind_of_plane(tmp_path):
    """Stored, run-deflated and searched planes in one chunk, written as the product writer
    writes them (``write_direct_chunk`` under HDF5's shuffle + deflate filters) and read back
    through HDF5's own filters."""
    rng = np.random.default_rng(3)
    n = 64 * 257  # one chunk of (64, 257) float32: four planes
    planes = np.stack([
        rng.integers(0, 256, n, dtype=np.uint8),  # stored
        (np.arange(n) % 7 * 37).astype(np.uint8),  # searched
        np.repeat(rng.integers(0, 4, n // 64 + 1, dtype=np.uint8), 64)[:n],  # runs
        np.full(n, 0x42, np.uint8),  # runs
    ])  # fmt: skip
    assert [_strategy(memoryview(p)) for p in planes] == [
        None, zlib.Z_DEFAULT_STRATEGY, zlib.Z_RLE, zlib.Z_RLE
    ]  # fmt: skip
    want = np.ascontiguousarray(planes.T).view(np.float32).reshape(64, 257)
    with h5py.File(tmp_path / "chunk.h5", "w") as f:
        dataset = f.create_dataset("image", shape=want.shape, dtype=np.float32,
                                   chunks=want.shape, compression="gzip", shuffle=True)  # fmt: skip
        dataset.id.write_direct_chunk((0, 0), deflate_planes(planes, 4))
    with h5py.File(tmp_path / "chunk.h5", "r") as f:
        assert f["image"][()].tobytes() == want.tobytes()
