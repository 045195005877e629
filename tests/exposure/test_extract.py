"""Stage 3, ``pyapred.exposure.extract``: jump pixels refitted with their own mask."""

import numpy as np
import pytest

from pyapred import Flag, extract_fluxes, fit_constant


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_jump_pixels_refitted_with_their_mask(dtype):
    """The unmasked chip fit plus a masked re-fit of the jump pixels equals one masked fit."""
    from pyapred.exposure import ChipExposure
    from pyapred.exposure.extract import _masked_at_jumps, _without_groups

    rng = np.random.default_rng(5)
    n_reads, ny, nx = 12, 6, 40
    flux = rng.uniform(5.0, 300.0, (ny, nx))
    reads = np.cumsum(rng.poisson(flux, (n_reads, ny, nx)), axis=0) + 1000
    reads[7:, 2, 3] += 5000  # a cosmic ray, and two in one pixel
    reads[4:, 5, 9] += 800
    reads[9:, 5, 9] += 900
    gain = rng.uniform(1.5, 2.5, (ny, nx))
    chip = ChipExposure("R", reads.astype(dtype), 10.0, gain=gain, saturation=20000.0)
    jumps = np.array([[7, 2, 3], [4, 5, 9], [9, 5, 9]])
    groups = rng.integers(0, 3, (ny, nx))
    omega = rng.uniform(0.7, 1.0, (3, n_reads - 1))
    mask = np.zeros(reads.shape, dtype=bool)
    mask[tuple(jumps.T)] = True

    def extract(reads, read_noise, gain, saturation, groups, mask=None):
        return extract_fluxes(reads, read_noise, omega, groups=groups, gain=gain,
                              saturation=saturation, mask=mask)  # fmt: skip

    for fit, want in [
        (extract, extract(chip.reads, 10.0, gain, 20000.0, groups, mask=mask)),
        (_without_groups(fit_constant), fit_constant(chip.reads, 10.0, gain=gain, mask=mask,
                                                     saturation=20000.0)),
    ]:  # fmt: skip
        got = _masked_at_jumps(fit, chip, jumps, groups)
        for name in ("flux", "flux_var", "chi2", "n_diff", "flags"):
            assert np.array_equal(getattr(got, name), getattr(want, name), equal_nan=True), name
        assert got.flags[2, 3] & Flag.MASKED_READ and got.n_diff[5, 9] == n_reads - 1 - 4


def test_extract_chip_refuses_another_chip_s_parts(small_chip):
    """No fits, a chip of other reads, another chip's preparation: no shape told the last (the
    wrong fibers' omega, with no flag); each is named."""
    import dataclasses

    from pyapred.exposure import FitOptions, extract_chip, fit_fibers, prepare_chip

    chip, traces = small_chip
    options = FitOptions()
    prepared = prepare_chip(chip, traces, options)
    fits = fit_fibers([prepared], options)
    with pytest.raises(TypeError, match="fibers: expected FiberFits, got NoneType"):
        extract_chip(chip, prepared, None, options)
    shorter = dataclasses.replace(chip, reads=chip.reads[:5])
    with pytest.raises(ValueError, match="prepared: expected the chip's"):
        extract_chip(shorter, prepared, fits, options)
    other = dataclasses.replace(prepared, name="G")
    with pytest.raises(ValueError, match="prepared: expected chip 'R''s, got chip 'G''s"):
        extract_chip(chip, other, fits, options)
