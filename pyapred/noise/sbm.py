"""The score-based route for correlated read noise (optional extra ``pyapred[sbm]``).

Salhi et al.'s approach (``../shared/docs/papers/score-based-1f-noise-paper.txt``) at patch scale:

- :func:`train_score_model`: a score model (``score_models`` DDPM U-net, variance-exploding SDE)
  trained by denoising score matching on image patches: dark read differences for the noise
  model, clean trace patches for the prior. Both share one noise schedule (``sigma_min``,
  ``sigma_max``); :func:`posterior_samples` matches the noise levels explicitly where they differ.
- :func:`posterior_samples`: the reverse-time SDE with the prior score plus a likelihood score,
  from a learned noise model (:func:`noise_model_likelihood`, ``-s_noise(t', y - x)``) or exact
  for Gaussian noise (:func:`gaussian_likelihood`, for tests and as a strong baseline). By
  default the likelihood is taken at Tweedie's denoised ``x0`` with its posterior variance, which
  is exact for Gaussian priors; the plain convolved-likelihood approximation (``y - x_t``) gives
  over-confident posteriors.
- :func:`summarize`: the posterior median and the 16-84 % interval.

Needs torch (CPU build), ``score-models==0.5.11`` and ``pqm``; imported only here. Torch uses 1
thread by default: on a shared 2-core CPU more threads were ~20x slower.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = [
    "SIGMA_MAX",
    "SIGMA_MIN",
    "check_checkpoint",
    "dark_patches",
    "gaussian_likelihood",
    "load_score_model",
    "noise_model_likelihood",
    "posterior_samples",
    "setting_problems",
    "summarize",
    "trace_patches",
    "train_score_model",
]

SIGMA_MIN = 0.01
SIGMA_MAX = 50.0


def _torch(threads: int = 1):
    try:
        import score_models
        import torch
    except ImportError as error:
        raise ImportError(
            "the score-based route needs the sbm extra: install torch's CPU build first "
            "(pip install torch), then pip install 'pyapred[sbm]'"
        ) from error
    torch.set_num_threads(int(threads))
    torch.set_flush_denormal(True)
    return torch, score_models


def setting_problems(
    *,
    nf: int | None = None,
    patch: tuple[int, int] | None = None,
    device: str = "cpu",
    threads: int = 1,
) -> list[tuple[str, str, str]]:
    """What the U-net or torch cannot run, found before any data is made or training starts.

    Parameters
    ----------
    nf : int, optional
        U-net base width of a model to train: its layers' channels must split into whole
        groups (16, 32, 64 do; 36, 48 do not), checked by running the network once on an
        8 x 8 image (the widths it takes do not depend on the patch size).
    patch : (int, int), optional
        Patch rows and columns: multiples of 4 (the U-net halves them twice).
    device : str
        A torch device: a CUDA one (``"cuda"``, ``"cuda:0"``) only where torch sees CUDA;
        others are left to torch.
    threads : int
        Torch threads for the check.

    Returns
    -------
    list of (argument, expected, found)
        Empty when all can run.
    """
    torch, sm = _torch(threads)
    problems = []
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        problems.append(("device", "cpu, or cuda where torch sees a CUDA device", "none"))
    if patch is not None and (len(patch) != 2 or any(int(n) < 4 or int(n) % 4 for n in patch)):
        problems.append(("patch", "rows and columns, multiples of 4", str(tuple(patch))))
    if nf is not None:
        shape = (1, 1, 8, 8)  # small: a 2048 x 2048 patch at width 256 would take gigabytes
        try:
            net = sm.DDPM(channels=1, nf=int(nf), ch_mult=(1, 2, 2), attention=False)
            with torch.no_grad():
                net(torch.zeros(1), torch.zeros(shape))
        except (ValueError, RuntimeError, ArithmeticError) as error:
            problems.append(("nf", "a U-net width whose layers split into whole groups "
                             "(such as 16, 32, 64)", f"{nf} ({error})"))  # fmt: skip
    return problems


def train_score_model(
    patches,
    out_dir=None,
    *,
    steps: int = 200,
    batch_size: int = 32,
    nf: int = 16,
    learning_rate: float = 1e-3,
    ema_decay: float = 0.999,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    device: str = "cpu",
    seed: int = 0,
    threads: int = 1,
):
    """Train a score model on image patches by denoising score matching.

    Parameters
    ----------
    patches : array_like, ``(n, h, w)``
        Training images (e- per read difference for a noise model); ``h`` and ``w`` multiples of 4.
    out_dir : str or os.PathLike, optional
        Checkpoint folder (``score_models`` layout; training resumes there); reload it with
        :func:`load_score_model`.
    steps : int
        Optimiser steps (batches).
    batch_size, nf, learning_rate : int, int, float
        Batch size, U-net base width (DDPM, channel multipliers 1, 2, 2), Adam learning rate.
    ema_decay : float
        Weight averaging; 0.999 suits short runs (0.9999 needs 1e5+ steps).
    sigma_min, sigma_max : float
        The VE noise schedule; give a noise model and its prior the same values.
    device : {"cpu", "cuda"}
    seed, threads : int

    Returns
    -------
    score_models.ScoreModel
    """
    torch, sm = _torch(threads)
    data = torch.as_tensor(np.asarray(patches, dtype=np.float32))[:, None]
    if data.ndim != 4 or data.shape[-1] % 4 or data.shape[-2] % 4:
        raise ValueError(f"patches: expected (n, h, w) with h, w multiples of 4, got {data.shape}")
    for argument, expected, found in setting_problems(
        nf=nf, patch=tuple(data.shape[-2:]), device=device, threads=threads
    ):
        raise ValueError(f"{argument}: expected {expected}, got {found}")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = sm.DDPM(channels=1, nf=nf, ch_mult=(1, 2, 2), attention=False)
    model = sm.ScoreModel(model=net, sigma_min=sigma_min, sigma_max=sigma_max, device=device)
    dataset = torch.utils.data.TensorDataset(data)
    model.fit(
        _FirstItem(dataset),
        epochs=1,
        n_iterations_in_epoch=int(steps),
        batch_size=batch_size,
        learning_rate=learning_rate,
        ema_decay=ema_decay,
        shuffle=True,
        checkpoints_directory=None if out_dir is None else str(out_dir),
        checkpoints=1,
        models_to_keep=1,
        seed=seed,
    )
    return model


class _FirstItem:
    """A TensorDataset whose items are single tensors (what ``ScoreModel.fit`` expects)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index][0]


def check_checkpoint(directory) -> Path:
    """``directory`` if it holds a model :func:`train_score_model` wrote: its
    ``model_hparams.json`` (a JSON object) and at least one ``checkpoint_*.pt`` of weights.

    Raises
    ------
    pyapred.errors.InputError
        Naming the folder (``--model``) or the file at fault. Without weights, score_models
        would build an untrained network from the settings alone and sample from it.
    """
    import json

    from ..errors import InputError

    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(directory, "--model", "a checkpoint folder of `noise train`",
                         "nothing" if not directory.exists() else "not a folder")  # fmt: skip
    settings = directory / "model_hparams.json"
    try:
        valid = isinstance(json.loads(settings.read_text(encoding="utf-8")), dict)
    except (OSError, UnicodeDecodeError, ValueError):
        valid = False
    if not valid:
        raise InputError(settings, "--model", "the model's settings as a JSON object",
                         "none or unreadable")  # fmt: skip
    if not any(p.is_file() for p in directory.glob("checkpoint_*.pt")):
        raise InputError(directory, "--model", "a checkpoint_*.pt of trained weights", "none")
    return directory


def load_score_model(directory, *, device: str = "cpu", threads: int = 1):
    """Reload a model written by :func:`train_score_model` from its checkpoint folder
    (checked by :func:`check_checkpoint`)."""
    _, sm = _torch(threads)
    check_checkpoint(directory)
    for argument, expected, found in setting_problems(device=device, threads=threads):
        raise ValueError(f"{argument}: expected {expected}, got {found}")
    return sm.ScoreModel(checkpoints_directory=str(directory), device=device)


def _sigma(sde, t):
    return sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** (t / sde.T)


def _time_for_sigma(sde, sigma):
    """The time at which a VE SDE reaches ``sigma`` (clipped to its range)."""
    import torch

    t = sde.T * torch.log(sigma / sde.sigma_min) / np.log(sde.sigma_max / sde.sigma_min)
    return t.clamp(sde.epsilon, sde.T)


def noise_model_likelihood(noise_model, y):
    """Likelihood score from a learned noise model: ``grad_x log q_s(y - x) = -s_noise(t', y - x)``.

    ``q_s`` is the noise distribution convolved with ``N(0, s^2 I)``, which is what the noise
    model learned at the time ``t'`` where its SDE reaches ``sigma = s``.

    Parameters
    ----------
    noise_model : score_models.ScoreModel
        Trained on noise samples (:func:`train_score_model`).
    y : torch.Tensor, ``(1, 1, h, w)``
        The observation.

    Returns
    -------
    callable
        ``score(sigma, x)`` with ``sigma`` a ``(batch,)`` tensor of convolution widths.
    """

    def score(sigma, x):
        return -noise_model.score(_time_for_sigma(noise_model.sde, sigma), y - x)

    return score


def gaussian_likelihood(cov, y):
    """Exact likelihood score of Gaussian noise convolved with ``N(0, s^2 I)``:
    ``(C + s^2 I)^-1 (y - x)``.

    Parameters
    ----------
    cov : array_like, ``(h w, h w)``
        Covariance of the flattened noise.
    y : torch.Tensor, ``(1, 1, h, w)``

    Returns
    -------
    callable
        ``score(sigma, x)`` with ``sigma`` a ``(batch,)`` tensor of convolution widths.
    """
    import torch

    cov = torch.as_tensor(np.asarray(cov, dtype=np.float64))
    values, vectors = torch.linalg.eigh(cov)

    def score(sigma, x):
        sigma2 = sigma.double().reshape(-1, 1) ** 2
        r = (y - x).reshape(x.shape[0], -1).double()
        solved = ((r @ vectors) / (values + sigma2)) @ vectors.T
        return solved.reshape(x.shape).to(x.dtype)

    return score


def posterior_samples(
    y,
    prior,
    likelihood,
    *,
    n_samples: int = 16,
    steps: int = 300,
    seed: int = 0,
    denoised: bool = True,
) -> np.ndarray:
    """Posterior samples of a clean image by the reverse-time SDE (Euler-Maruyama).

    The drift uses the score of ``p_t(x_t | y)``: the prior score plus the likelihood score of
    ``p(y | x_t)``. With ``denoised`` (default), ``p(y | x_t)`` is the noise distribution
    convolved with a Gaussian approximation of ``p(x_0 | x_t)``: mean ``x0 = x_t + sigma_t^2
    s_prior`` (Tweedie) and variance ``r^2 = sigma_t^2 (1 + sigma_t^2 div s_prior / d)`` (its
    second-order form, the divergence from one Hutchinson probe per sample), pulled back to
    ``x_t`` through the mean diagonal ``r^2 / sigma_t^2`` of the Jacobian of ``x0``. This is
    exact for an isotropic Gaussian prior and Gaussian noise. Without it, ``p(y | x_t)`` is the
    noise convolved with ``N(0, sigma_t^2)`` at ``y - x_t`` (the convolved-likelihood
    approximation of Salhi et al.): about 2x cheaper, but for a Gaussian prior of variance 4 and
    unit noise it gives a posterior mean of 0.72 y and variance 0.58 instead of 0.8 y and 0.8
    (over-confident intervals).

    The last step returns its mean (no noise added), as ``score_models`` does.

    Parameters
    ----------
    y : array_like, ``(h, w)``
        The observation (clean image plus noise).
    prior : score_models.ScoreModel
    likelihood : callable or None
        ``likelihood(sigma, x)`` (:func:`noise_model_likelihood`, :func:`gaussian_likelihood`);
        None samples the prior.
    n_samples, steps, seed : int
    denoised : bool

    Returns
    -------
    ndarray, float64, ``(n_samples, h, w)``
    """
    import torch

    sde = prior.sde
    shape = (int(n_samples), 1, *np.shape(y))
    d = float(np.prod(np.shape(y)))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator) * sde.sigma_max
    dt = (sde.T - sde.epsilon) / steps
    t = torch.full((shape[0],), float(sde.T))
    mean = x
    for _ in range(steps):
        g = sde.diffusion(t, x)
        sigma = _sigma(sde, t)
        if likelihood is None:
            with torch.no_grad():
                score = prior.score(t, x)
        elif not denoised:
            with torch.no_grad():
                score = prior.score(t, x) + likelihood(sigma, x)
        else:
            score = _denoised_posterior_score(prior, likelihood, t, x, sigma, d, generator)
        with torch.no_grad():
            mean = x - (sde.drift(t, x) - g**2 * score) * dt
            x = mean + g * np.sqrt(dt) * torch.randn(shape, generator=generator)
        t = t - dt
    return mean[:, 0].double().numpy()


def _denoised_posterior_score(prior, likelihood, t, x, sigma, d, generator):
    """Prior score plus ``J^T grad log q_r(y - x0)`` with Tweedie's ``x0`` and ``r``.

    The Jacobian ``J = I + sigma^2 ds/dx`` of ``x0`` is taken as its mean diagonal, ``r^2 /
    sigma^2`` (exact for isotropic Gaussian priors): the full vector-Jacobian product multiplies
    the network's derivative errors by ``sigma^2`` and diverged with learned priors.
    """
    import torch

    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        score = prior.score(t, x)
        probe = torch.randint(0, 2, x.shape, generator=generator).to(x.dtype) * 2 - 1
        (jp,) = torch.autograd.grad(score, x, probe)
    score = score.detach()
    div = (jp * probe).flatten(1).sum(1)  # Hutchinson: div s ~ probe . (ds/dx) probe
    # Posterior variance of x0 given x_t, as a fraction of sigma^2, kept within (0, 1].
    shrink = (1 + sigma**2 * div / d).clamp(1e-4, 1.0)
    s2 = (sigma**2).view(-1, 1, 1, 1)
    x0 = x.detach() + s2 * score
    v = likelihood(sigma * shrink.sqrt(), x0)
    return score + shrink.view(-1, 1, 1, 1) * v


def summarize(samples) -> dict[str, np.ndarray]:
    """Posterior median and 68 % interval: ``{"median", "low", "high"}``, each ``(h, w)``."""
    low, median, high = np.percentile(np.asarray(samples), [15.865, 50.0, 84.135], axis=0)
    return {"median": median, "low": low, "high": high}


def dark_patches(diffs, patch: tuple[int, int] = (32, 32), output: int = 0) -> np.ndarray:
    """Non-overlapping patches of one output's read differences, in read order.

    Parameters
    ----------
    diffs : array_like, ``(n, ny, 2560)``
        Dark read differences (non-overlapping pairs, so that they are independent), in e-.
    patch : (int, int)
        Rows and columns of a patch.
    output : int
        Output 0-3 (the reference output is 4); flipped outputs are put in read order.

    Returns
    -------
    ndarray, float32, ``(n_patches, rows, columns)``
    """
    from .hxrg import time_order

    frames = time_order(np.asarray(diffs, dtype=np.float32))[:, :, output, :]
    h, w = patch
    n, ny, nx = frames.shape
    frames = frames[:, : ny // h * h, : nx // w * w]
    tiles = frames.reshape(n, ny // h, h, nx // w, w).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(tiles.reshape(-1, h, w))


def trace_patches(
    n: int, patch: tuple[int, int] = (32, 32), *, rng=None, spacing: float = 7.0
) -> np.ndarray:
    """Clean simulated APOGEE-like trace patches for a prior: horizontal Gaussian profiles.

    Traces run along the rows (dispersion), ``spacing`` rows apart (random phase), profile sigma
    ~1.1 rows, log-normal amplitudes around 8, a smooth continuum and a few absorption lines.
    Returns ``(n, rows, columns)`` float32.
    """
    rng = np.random.default_rng(rng)
    h, w = patch
    y = np.arange(h)[:, None]
    x = np.arange(w)[None, :]
    out = np.zeros((n, h, w), dtype=np.float32)
    for i in range(n):
        image = np.zeros((h, w))
        for center in np.arange(rng.uniform(-spacing, 0), h + spacing, spacing):
            width = rng.uniform(0.9, 1.3)
            amplitude = np.exp(rng.normal(np.log(8.0), 0.5))
            continuum = 1 + 0.1 * np.sin(2 * np.pi * (x / w * rng.uniform(0.2, 1) + rng.uniform()))
            for line in rng.uniform(0, w, rng.integers(0, 4)):
                continuum = continuum * (1 - 0.5 * np.exp(-0.5 * ((x - line) / 1.5) ** 2))
            image += amplitude * continuum * np.exp(-0.5 * ((y - center) / width) ** 2)
        out[i] = image
    return out
