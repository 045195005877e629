"""Toy comparison of the score-based route with Wiener filters (needs the sbm extra).

Clean APOGEE-like trace patches plus simulated H2RG noise patches (16 x 16 by default); the score
models train for ``--steps`` steps on 1 thread. Prints, over ``--observations`` test patches, the
pixel RMS and the row-mean residual std of the posterior median, and the 68 % coverage:

- raw data; Wiener filter with white noise; Wiener filter with the full noise covariance (both
  with the empirical trace covariance as the prior);
- SBM prior + learned noise model; SBM prior + exact Gaussian likelihood; each with the default
  (denoised) likelihood and with the plain convolved-likelihood approximation.

    python benchmarks/bench_sbm_toy.py [--steps 600] [--patch 16] [--observations 6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    import torch

    from pyapred.noise import HxrgNoise, simulate_hxrg
    from pyapred.noise.sbm import (
        dark_patches,
        gaussian_likelihood,
        noise_model_likelihood,
        posterior_samples,
        trace_patches,
        train_score_model,
    )  # fmt: skip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--observations", type=int, default=6)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--sampler-steps", type=int, default=300)
    args = parser.parse_args(argv)
    p = args.patch
    noise = HxrgNoise(white=1.0, c_pink=0.6, u_pink=0.3, acn=0.2, read_time=0.0)
    reads = simulate_hxrg(16, noise, rows=slice(4, 4 + 32 * p), rng=1)
    darks = dark_patches(reads[1::2] - reads[0::2], (p, p))
    train_darks, test_noise = darks[: -args.observations], darks[-args.observations :]
    traces = trace_patches(4096, (p, p), rng=2)
    truth = trace_patches(args.observations, (p, p), rng=3)
    y = truth + test_noise
    print(f"{len(train_darks)} noise patches, {len(traces)} trace patches, {p} x {p}")

    start = time.perf_counter()
    noise_model = train_score_model(train_darks, steps=args.steps, sigma_max=150.0, seed=0)
    prior = train_score_model(traces, steps=args.steps, sigma_max=150.0, seed=1)
    print(f"training: {time.perf_counter() - start:.0f} s for two models of {args.steps} steps")

    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    c_noise = np.cov(flat(train_darks), rowvar=False)
    c_prior = np.cov(flat(traces), rowvar=False)
    m_prior = flat(traces).mean(axis=0)
    white = np.eye(p * p) * np.diag(c_noise).mean()

    def wiener(cov):
        gain = c_prior @ np.linalg.inv(c_prior + cov)
        return (m_prior + (flat(y) - m_prior) @ gain.T).reshape(y.shape)

    results = {"raw data": (y, None), "Wiener, white noise": (wiener(white), None),
               "Wiener, full 1/f covariance": (wiener(c_noise), None)}  # fmt: skip
    for name in (
        "SBM prior + learned noise",
        "SBM prior + exact Gaussian noise",
        "SBM, learned noise, plain likelihood",
        "SBM, Gaussian noise, plain likelihood",
    ):
        medians, inside = [], []
        for i in range(args.observations):
            yt = torch.as_tensor(y[i][None, None].astype(np.float32))
            if "learned" in name:
                likelihood = noise_model_likelihood(noise_model, yt)
            else:
                likelihood = gaussian_likelihood(c_noise, yt)
            samples = posterior_samples(y[i], prior, likelihood, n_samples=args.samples,
                                        steps=args.sampler_steps, seed=i,
                                        denoised="plain" not in name)  # fmt: skip
            low, median, high = np.percentile(samples, [15.865, 50, 84.135], axis=0)
            medians.append(median)
            inside.append((truth[i] >= low) & (truth[i] <= high))
        results[name] = (np.array(medians), float(np.mean(inside)))
    print(f"{'estimator':>38} {'pixel RMS':>10} {'row-mean std':>13} {'68% coverage':>13}")
    for name, (estimate, coverage) in results.items():
        residual = estimate - truth
        cov = "" if coverage is None else f"{coverage:.2f}"
        print(f"{name:>38} {np.sqrt(np.mean(residual**2)):>10.3f} "
              f"{residual.mean(axis=-1).std():>13.3f} {cov:>13}")  # fmt: skip


if __name__ == "__main__":
    main()
