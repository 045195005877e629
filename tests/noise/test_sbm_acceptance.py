"""Acceptance test of the score-based route at toy size (slow: run with ``pytest -m slow``).

Two score models are trained on 1 CPU thread (about 10-15 minutes on the shared 2-core
development machine): a noise model on 16 x 16 patches of simulated dark read differences, and a
prior on clean trace patches. The noise is Gaussian, so the exact score and the exact covariance
are known. The bars are those of issue 9:

- learned noise score: relative MSE < 0.1 against the exact score at sigma >= 0.5;
- generated noise: PQMass chi2 within dof +- 3 sqrt(2 dof) of held-out darks, and a white-noise
  impostor of the same pixel variance rejected; row-mean std within 10 %;
- posterior (prior + learned noise likelihood): 68 % interval coverage in [0.55, 0.80].

Every measured number is printed (``-s``).
"""

import numpy as np
import pytest

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
pytest.importorskip("score_models")

from pyapred.noise import HxrgNoise, simulate_hxrg  # noqa: E402
from pyapred.noise.evaluate import pqmass, row_mean_std  # noqa: E402
from pyapred.noise.sbm import (  # noqa: E402
    _time_for_sigma,
    dark_patches,
    noise_model_likelihood,
    posterior_samples,
    summarize,
    trace_patches,
    train_score_model,
)

PATCH = (16, 16)
TOY = HxrgNoise(white=1.0, c_pink=0.6, u_pink=0.3, acn=0.2, read_time=0.0)
NOISE_STEPS, PRIOR_STEPS = 800, 500
SIGMA_MAX = 150.0
HELD_OUT = 512


@pytest.fixture(scope="module")
def darks():
    reads = simulate_hxrg(16, TOY, rows=slice(4, 4 + 32 * PATCH[0]), rng=1)
    patches = dark_patches(reads[1::2] - reads[0::2], PATCH)  # 8192 patches of 8 differences
    # A random held-out set: patches of one frame share its low-frequency 1/f, so the last 512
    # (one frame) are not a sample of the whole distribution (PQMass 49 for exact Gaussian draws
    # against them, 21 against a random set).
    pick = np.random.default_rng(0).permutation(len(patches))
    return patches[pick[HELD_OUT:]], patches[pick[:HELD_OUT]]


@pytest.fixture(scope="module")
def noise_model(darks):
    train, _ = darks
    return train_score_model(train, steps=NOISE_STEPS, sigma_max=SIGMA_MAX, seed=0)


@pytest.fixture(scope="module")
def prior():
    traces = trace_patches(4096, PATCH, rng=2)
    return train_score_model(traces, steps=PRIOR_STEPS, sigma_max=SIGMA_MAX, seed=1)


def test_learned_score_matches_the_exact_score(darks, noise_model):
    train, held_out = darks
    cov = np.cov(train.reshape(len(train), -1), rowvar=False)
    rng = np.random.default_rng(3)
    for sigma in (0.5, 1.0, 2.0, 4.0):
        x = held_out.reshape(HELD_OUT, -1) + sigma * rng.standard_normal((HELD_OUT, cov.shape[0]))
        exact = -np.linalg.solve(cov + sigma**2 * np.eye(len(cov)), x.T).T
        t = _time_for_sigma(noise_model.sde, torch.full((HELD_OUT,), sigma))
        with torch.no_grad():
            learned = noise_model.score(t, torch.as_tensor(x.reshape(-1, 1, *PATCH)).float())
        error = np.mean((learned.numpy().reshape(HELD_OUT, -1) - exact) ** 2)
        relative = error / np.mean(exact**2)
        print(f"sigma {sigma}: learned-score relative MSE {relative:.3f}")
        assert relative < 0.1


def test_generated_noise_matches_held_out_darks(darks, noise_model):
    _, held_out = darks
    generated = posterior_samples(np.zeros(PATCH), noise_model, None, n_samples=HELD_OUT, steps=300)
    num_refs = 20
    dof, width = num_refs - 1, 3 * np.sqrt(2 * (num_refs - 1))
    chi2 = np.median(pqmass(generated, held_out, num_refs=num_refs, re_tessellation=5, rng=4))
    white = np.random.default_rng(5).standard_normal(held_out.shape) * held_out.std(axis=0)
    impostor = np.median(pqmass(white, held_out, num_refs=num_refs, re_tessellation=5, rng=4))
    ratio = row_mean_std(generated) / row_mean_std(held_out)
    print(f"PQMass chi2 {chi2:.1f} (dof {dof} +- {width:.1f}); white impostor {impostor:.1f}; "
          f"row-mean std ratio {ratio:.3f}")  # fmt: skip
    assert abs(chi2 - dof) <= width
    assert impostor > dof + width
    assert abs(ratio - 1) < 0.10


def test_posterior_interval_coverage(darks, noise_model, prior):
    _, held_out = darks
    truth = trace_patches(8, PATCH, rng=6)
    inside, rms = [], []
    for i, clean in enumerate(truth):
        y = clean + held_out[i]
        likelihood = noise_model_likelihood(noise_model, torch.as_tensor(y[None, None]).float())
        samples = posterior_samples(y, prior, likelihood, n_samples=32, steps=150, seed=i)
        summary = summarize(samples)
        inside.append((summary["low"] <= clean) & (clean <= summary["high"]))
        rms.append(np.sqrt(np.mean((summary["median"] - clean) ** 2)))
    coverage = float(np.mean(inside))
    print(f"68 % coverage {coverage:.3f}; median RMS {np.mean(rms):.3f} "
          f"(noise RMS {held_out[:8].std():.3f})")  # fmt: skip
    assert 0.55 <= coverage <= 0.80
