"""H2RG read noise with APOGEE clocking (an NGHXRG-like model, Rauscher 2015, re-implemented).

The detector is read through five synchronous outputs: four science outputs of 512 columns
(columns ``512 o .. 512 o + 511`` of the 2048-column H2RG array) and the 512-column reference
output (raw columns 2048-2559). Within an output the fast read direction alternates::

    output 0 |---->| 1 |<----| 2 |---->| 3 |<----| reference |---->|

Rows are read one after the other (the slow axis), each followed by ``row_overhead`` idle pixel
times, so each output produces one time-ordered stream. Noise is generated in that stream and
mapped back to the image, which is what turns 1/f noise into row-wise offsets within each output.

Components (all in the units of ``white``, e.g. e- or DN per read):

- white read noise, independent per pixel and read (``ref_ratio`` times lower on the 4-pixel
  reference border and on the reference output);
- correlated pink noise ``c_pink``: one 1/f stream common to all five outputs;
- uncorrelated pink noise ``u_pink``: an independent 1/f stream per output;
- alternating-column noise ``acn``: independent 1/f streams for the even and odd samples of each
  output.

A pink amplitude is the standard deviation of that component within one APOGEE read, i.e. over
the frequencies from ``1 / 10.647 s`` to the pixel-rate Nyquist frequency; the one-sided power
spectral density is ``amp**2 / (f * ln(f_nyquist * 10.647 s))``, so the noise keeps going below
that band (across reads), as real 1/f noise does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "HxrgNoise",
    "OUTPUT_COLUMNS",
    "REFERENCE_BORDER",
    "simulate_hxrg",
    "simulate_hxrg_bytes",
    "reference_pixels",
    "time_order",
]

OUTPUT_COLUMNS = 512  # columns per output
N_SCIENCE_OUTPUTS = 4
N_OUTPUTS = 5  # with the reference output
CHIP_ROWS = 2048
REFERENCE_BORDER = 4  # reference pixels on each edge of the 2048 x 2048 array
APOGEE_READ_TIME = 10.647  # s, INTOFF = 10647 ms


@dataclass(frozen=True)
class HxrgNoise:
    """Parameters of :func:`simulate_hxrg`.

    Attributes
    ----------
    white : float
        Single-read white noise sigma of a science pixel (sets the units of everything else).
    c_pink, u_pink, acn : float
        Correlated, per-output and alternating-column 1/f amplitudes: the standard deviation of
        the component within one read (see the module docstring).
    ref_ratio : float
        White noise of reference pixels (border and reference output) relative to ``white``.
    read_time : float
        Seconds from the start of one read to the next (APOGEE: 10.647). When it is shorter than
        the time the simulated rows take, reads follow each other without a gap ("compressed
        timing", cheaper for small simulations; the across-read correlation is then stronger).
    pixel_time : float
        Seconds per pixel sample (10 us).
    row_overhead : int
        Idle pixel times at the end of each row (NGHXRG's ``nroh``).
    """

    white: float = 1.0
    c_pink: float = 0.6
    u_pink: float = 0.3
    acn: float = 0.2
    ref_ratio: float = 0.8
    read_time: float = APOGEE_READ_TIME
    pixel_time: float = 10e-6
    row_overhead: int = 12

    def pink_level(self, amplitude: float) -> float:
        """One-sided PSD coefficient ``a**2`` (PSD = ``a**2 / f``) of a pink ``amplitude``."""
        nyquist = 0.5 / self.pixel_time
        return amplitude**2 / np.log(nyquist * APOGEE_READ_TIME)


class _PinkGenerator:
    """1/f series of ``n`` samples (interval ``dt``) with one-sided PSD ``level / f``.

    White noise is filtered in the Fourier domain of a series padded to twice the length, so the
    result is not periodic (NGHXRG); the zero-frequency term is removed. The white noise is drawn
    directly as its Fourier transform (complex Gaussian bins), and independent series that end up
    summed are summed as spectra, so each output costs one inverse FFT.
    """

    def __init__(self, n: int, dt: float, rng: np.random.Generator):
        from scipy import fft

        self.n = n
        self.m = fft.next_fast_len(2 * n, real=True)
        self.rng = rng
        n_bins = self.m // 2 + 1
        f = np.arange(1, n_bins) / (self.m * dt)
        # The rfft of m unit white samples has bins with E|X|^2 = m (real and imaginary parts m/2
        # each); white samples have one-sided PSD 2 dt, so |H|^2 = 1 / (2 dt f) gives 1/f.
        gain = np.sqrt(self.m / 2.0) * np.sqrt(1.0 / (2.0 * dt * f))
        self.gain = np.concatenate([[0.0], gain]).astype(np.float32)
        if self.m % 2 == 0:
            self.gain[-1] *= np.sqrt(2.0)  # the Nyquist bin is real, with variance m

    def spectrum(self, level: float) -> np.ndarray:
        """Spectrum of one series (the rfft of m unit white samples, filtered), complex64."""
        n_bins = self.gain.size
        spec = self.rng.standard_normal(2 * n_bins, dtype=np.float32).view(np.complex64)
        if self.m % 2 == 0:
            spec[-1] = spec[-1].real
        spec *= self.gain * np.float32(np.sqrt(level))
        return spec

    def series(self, spectrum: np.ndarray) -> np.ndarray:
        from scipy import fft

        return fft.irfft(spectrum, self.m)[: self.n]


def _stream_to_image(stream: np.ndarray, n_reads: int, n_rows: int, per_read: int, row_len: int):
    """Cut a time-ordered stream into ``(n_reads, n_rows, 512)`` in read order (fast axis last)."""
    frames = stream[: n_reads * per_read].reshape(n_reads, per_read)[:, : n_rows * row_len]
    return frames.reshape(n_reads, n_rows, row_len)[..., :OUTPUT_COLUMNS]


def _flip(output: int) -> bool:
    """Outputs 1 and 3 are read right to left; 0, 2 and the reference output left to right."""
    return output in (1, 3)


def time_order(image: np.ndarray) -> np.ndarray:
    """Pixels of each output in read order: ``(..., 2560)`` columns -> ``(..., 5, 512)``.

    Parameters
    ----------
    image : ndarray, ``(..., ny, 2560)``
        Raw frames (science array plus reference output).

    Returns
    -------
    ndarray, ``(..., ny, 5, 512)``
        Output ``o``'s samples in the order they were read (outputs 1 and 3 flipped); flattening
        the last three axes of one output gives its time stream without the row overheads.
    """
    image = np.asarray(image)
    if image.shape[-1] != N_OUTPUTS * OUTPUT_COLUMNS:
        raise ValueError(f"image: expected 2560 columns, got shape {image.shape}")
    out = image.reshape(*image.shape[:-1], N_OUTPUTS, OUTPUT_COLUMNS).copy()
    for o in (1, 3):
        out[..., o, :] = out[..., o, ::-1]
    return out


def simulate_hxrg(
    n_reads: int,
    noise: HxrgNoise | None = None,
    *,
    rows: slice = slice(0, CHIP_ROWS),
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Simulate the read noise of an APOGEE H2RG: white, correlated/uncorrelated 1/f and ACN.

    Parameters
    ----------
    n_reads : int
        Reads to simulate; consecutive reads are consecutive in time, so the 1/f noise is
        correlated across them.
    noise : HxrgNoise, optional
        Amplitudes and clocking; default ``HxrgNoise()``.
    rows : slice, optional
        Chip rows to simulate (step 1, within 0-2048): only these are read, in order. Their
        position matters only for the reference border's lower white noise.
    rng : numpy.random.Generator or int, optional
        Source of randomness (an int is a seed); the result is a deterministic function of it.

    Returns
    -------
    ndarray, float64, ``(n_reads, n_rows, 2560)``
        Noise per read, columns 0-2047 the H2RG array (reference border included), 2048-2559
        the reference output; same units as ``noise.white``.
    """
    noise = HxrgNoise() if noise is None else noise
    rng = np.random.default_rng(rng)
    start, stop, step = rows.indices(CHIP_ROWS)
    if step != 1 or stop <= start:
        raise ValueError(f"rows: expected a non-empty slice with step 1 within 0-2048, got {rows}")
    if int(n_reads) < 1:
        raise ValueError(f"n_reads: expected >= 1, got {n_reads}")
    n_rows = stop - start
    row_len = OUTPUT_COLUMNS + int(noise.row_overhead)
    per_read = max(n_rows * row_len, int(round(noise.read_time / noise.pixel_time)))
    n_samples = n_reads * per_read
    dt = noise.pixel_time

    out = np.empty((n_reads, n_rows, N_OUTPUTS * OUTPUT_COLUMNS))
    if not (noise.c_pink or noise.u_pink or noise.acn):
        # White noise alone: the time streams (tens of bytes a pixel time, gaps included: 3 GB
        # for 100 reads of one row) would be all zeros. No draws are skipped.
        out[:] = rng.standard_normal(out.shape, dtype=np.float32) * _white_sigma(noise, start, stop)
        return out
    full = _PinkGenerator(n_samples, dt, rng)
    half = _PinkGenerator((n_samples + 1) // 2, 2 * dt, rng)
    common = full.spectrum(noise.pink_level(noise.c_pink)) if noise.c_pink else 0.0
    for o in range(N_OUTPUTS):
        spectrum = common + (full.spectrum(noise.pink_level(noise.u_pink)) if noise.u_pink else 0)
        stream = full.series(spectrum) if np.ndim(spectrum) else np.zeros(n_samples, np.float32)
        if noise.acn:
            # Even and odd samples carry independent 1/f series, each sampled every 2 pixel times.
            level = noise.pink_level(noise.acn)
            stream[0::2] += half.series(half.spectrum(level))[: (n_samples + 1) // 2]
            stream[1::2] += half.series(half.spectrum(level))[: n_samples // 2]
        image = _stream_to_image(stream, n_reads, n_rows, per_read, row_len)
        out[..., o * OUTPUT_COLUMNS : (o + 1) * OUTPUT_COLUMNS] = (
            image[..., ::-1] if _flip(o) else image
        )

    out += rng.standard_normal(out.shape, dtype=np.float32) * _white_sigma(noise, start, stop)
    return out


#: Peak memory of :func:`simulate_hxrg`'s 1/f time streams, bytes per pixel time (62 measured,
#: with c_pink, u_pink and ACN; the streams cover the whole read, gaps included).
PINK_BYTES_PER_SAMPLE = 64


def simulate_hxrg_bytes(n_reads: int, noise: HxrgNoise, rows: slice = slice(0, CHIP_ROWS)) -> int:
    """Peak memory :func:`simulate_hxrg` needs, in bytes (an estimate, for refusing up front).

    The float64 result, its float32 white-noise draw, and with any 1/f amplitude the time
    streams, which grow with ``read_time`` (one sample every ``pixel_time``), not with the rows.
    """
    start, stop, _ = rows.indices(CHIP_ROWS)
    n_rows = max(stop - start, 0)
    frame = n_reads * n_rows * N_OUTPUTS * OUTPUT_COLUMNS
    total = 12 * frame
    if noise.c_pink or noise.u_pink or noise.acn:
        row_len = OUTPUT_COLUMNS + int(noise.row_overhead)
        per_read = max(n_rows * row_len, int(round(noise.read_time / noise.pixel_time)))
        total += PINK_BYTES_PER_SAMPLE * n_reads * per_read
    return int(total)


def reference_pixels(rows: slice = slice(0, CHIP_ROWS)) -> np.ndarray:
    """Mask of reference pixels, ``(n_rows, 2560)``: the 4-pixel border and the reference output."""
    start, stop, _ = rows.indices(CHIP_ROWS)
    science = N_SCIENCE_OUTPUTS * OUTPUT_COLUMNS
    y = np.arange(start, stop)
    ref = np.zeros((stop - start, N_OUTPUTS * OUTPUT_COLUMNS), dtype=bool)
    ref[(y < REFERENCE_BORDER) | (y >= CHIP_ROWS - REFERENCE_BORDER)] = True
    ref[:, :REFERENCE_BORDER] = True
    ref[:, science - REFERENCE_BORDER :] = True
    return ref


def _white_sigma(noise: HxrgNoise, start: int, stop: int) -> np.ndarray:
    ref = reference_pixels(slice(start, stop))
    return np.where(ref, noise.ref_ratio * noise.white, noise.white)
