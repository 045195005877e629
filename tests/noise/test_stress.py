"""The four-case 1/f stress test of fit_omega, at small size (docs/noise.md has larger runs)."""

import numpy as np
import pytest

from pyapred.noise import HxrgNoise
from pyapred.noise.stress import stress_test

# Read noise in e- on a compressed clock; fibres of 2 rows x 255 pixels (every 8th column),
# fluxes 100-600 e- per read, 10 differences, a passing cloud.
SMALL = dict(n_exposures=6, n_fibres=16, rows_per_fibre=2, column_step=8, rng=0)
# Correlated noise common to all outputs and the reference output: what reference pixels can see.
COMMON = HxrgNoise(white=10.0, c_pink=6.0, u_pink=0.0, acn=0.0, read_time=0.0)
# Plus per-output 1/f and alternating-column noise, which the reference output cannot see.
MIXED = HxrgNoise(white=10.0, c_pink=6.0, u_pink=3.0, acn=2.0, read_time=0.0)


# 96 fibres: the bias has a standard error of ~0.1 sigma (the z-scores of one fibre correlate).
def _passes(z: np.ndarray) -> bool:
    return abs(z.std() - 1.0) <= 0.15 and abs(z.mean()) < 0.2


def _fails(z: np.ndarray) -> bool:
    return not 0.8 <= z.std() <= 1.25 or abs(z.mean()) > 0.5


@pytest.fixture(scope="module")
def common():
    return stress_test(
        noise=COMMON,
        cases=("no_1f", "uncorrected", "refcorr", "nuisance", "refcorr_nuisance"),
        refcorr_options=dict(reference_columns=False),
        **SMALL,
    )


def test_without_1f_the_model_holds(common):
    assert _passes(common.z["no_1f"])


def test_uncorrected_1f_breaks_omega(common):
    assert _fails(common.z["uncorrected"])


def test_reference_output_correction_nearly_restores_omega(common):
    """Unbiased, z std down from ~4.4 to ~1.24: short of 1 +- 0.15. Subtracting the reference
    output adds its white noise, the same in all four outputs, and the fit does not model it
    (docs/noise.md); the nuisance term absorbs the row-mean part of it."""
    z, uncorrected = common.z["refcorr"], common.z["uncorrected"]
    assert abs(z.mean()) < 0.2
    assert z.std() < 1.35 and z.std() < uncorrected.std() / 3
    assert not _passes(z)  # the documented shortfall; revisit if refcorr improves
    assert _passes(common.z["refcorr_nuisance"])


def test_nuisance_term_restores_omega(common):
    assert _passes(common.z["nuisance"])


def test_per_output_1f_needs_the_nuisance_term():
    """The reference output cannot see per-output 1/f: refcorr fails, the nuisance term does not."""
    result = stress_test(
        noise=MIXED,
        cases=("uncorrected", "refcorr", "nuisance"),
        refcorr_options=dict(reference_columns=False),
        **SMALL,
    )
    assert _fails(result.z["uncorrected"])
    assert _fails(result.z["refcorr"])
    assert _passes(result.z["nuisance"])


def test_unknown_case():
    with pytest.raises(ValueError, match="cases"):
        stress_test(1, cases=("sirs",))
