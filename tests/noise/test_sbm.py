"""The score-based route (pyapred[sbm]); skipped where torch or score-models are absent."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("score_models")

from pyapred.cli import main  # noqa: E402
from pyapred.noise import HxrgNoise, simulate_hxrg  # noqa: E402
from pyapred.noise.evaluate import pqmass, row_mean_std  # noqa: E402
from pyapred.noise.sbm import (  # noqa: E402
    dark_patches,
    gaussian_likelihood,
    load_score_model,
    noise_model_likelihood,
    posterior_samples,
    summarize,
    trace_patches,
    train_score_model,
)

TOY = HxrgNoise(white=1.0, c_pink=0.6, u_pink=0.3, acn=0.2, read_time=0.0)


class _DiffusedGaussian:
    """Exact score of N(mean, var I) diffused by a VE SDE: -(x - mean) / (var + sigma_t^2)."""

    def __init__(self, mean, var, sde):
        self.mean, self.var, self.sde = torch.as_tensor(mean), var, sde

    def score(self, t, x):
        sigma = self.sde.sigma_min * (self.sde.sigma_max / self.sde.sigma_min) ** t
        return -(x - self.mean) / (self.var + sigma.view(-1, 1, 1, 1) ** 2)


@pytest.fixture(scope="module")
def noise_model(tmp_path_factory):
    reads = simulate_hxrg(8, TOY, rows=slice(4, 260), rng=1)
    patches = dark_patches(reads[1::2] - reads[0::2], (16, 16))
    out = tmp_path_factory.mktemp("noise")
    return train_score_model(patches, out, steps=40, batch_size=16, seed=0), out, patches


def test_sampler_draws_the_target_of_an_exact_score(noise_model):
    """The reverse SDE with the exact diffused score of N(m, 0.8) draws N(m, 0.8)."""
    model, _, _ = noise_model
    mean = np.random.default_rng(0).normal(0, 2.0, (4, 4))
    target = _DiffusedGaussian(mean[None, None], 0.8, model.sde)
    samples = posterior_samples(np.zeros((4, 4)), target, None, n_samples=400, steps=400, seed=1)
    assert np.abs(samples.mean(axis=0) - mean).max() < 0.25
    assert abs(samples.var(axis=0).mean() / 0.8 - 1) < 0.15


@pytest.mark.parametrize("denoised", [True, False])
def test_posterior_of_a_gaussian_prior(noise_model, denoised):
    """Prior N(0, 4), unit noise: the posterior is N(0.8 y, 0.8). The plain convolved-likelihood
    approximation gives about N(0.72 y, 0.58); the denoised likelihood is exact here."""
    model, _, _ = noise_model
    y = np.full((4, 4), 3.0)
    prior = _DiffusedGaussian(np.zeros((1, 1, 4, 4)), 4.0, model.sde)
    likelihood = gaussian_likelihood(np.eye(16), torch.as_tensor(y[None, None]).float())
    samples = posterior_samples(
        y, prior, likelihood, n_samples=1000, steps=100, seed=2, denoised=denoised
    )
    mean, var = samples.mean() / 3.0, samples.var(axis=0).mean()
    if denoised:
        assert abs(mean - 0.8) < 0.02 and abs(var / 0.8 - 1) < 0.05
    else:
        assert mean < 0.75 and var < 0.65


def test_gaussian_likelihood_score(noise_model):
    model, _, _ = noise_model
    rng = np.random.default_rng(1)
    cov = np.diag(rng.uniform(0.5, 2.0, 16))
    y, x = rng.normal(size=(2, 1, 1, 4, 4))
    sigma = torch.full((1,), 0.7)
    sigma2 = 0.49
    got = gaussian_likelihood(cov, torch.as_tensor(y))(sigma, torch.as_tensor(x))
    want = ((y - x).ravel() / (np.diag(cov) + sigma2)).reshape(x.shape)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_end_to_end_toy(noise_model):
    model, out, patches = noise_model
    prior = train_score_model(trace_patches(128, (16, 16), rng=2), steps=20, batch_size=16)
    reloaded = load_score_model(out)
    x = torch.as_tensor(patches[:2, None])
    t = torch.full((2,), 0.5)
    with torch.no_grad():
        assert torch.allclose(reloaded.score(t, x), model.score(t, x), atol=1e-5)
    truth = trace_patches(1, (16, 16), rng=3)[0]
    y = truth + patches[0]
    likelihood = noise_model_likelihood(model, torch.as_tensor(y[None, None]))
    samples = posterior_samples(y, prior, likelihood, n_samples=4, steps=20)
    summary = summarize(samples)
    assert samples.shape == (4, 16, 16) and np.isfinite(samples).all()
    assert np.all(summary["low"] <= summary["median"]) and np.all(
        summary["median"] <= summary["high"]
    )
    generated = posterior_samples(np.zeros((16, 16)), model, None, n_samples=32, steps=20)
    assert np.isfinite(pqmass(generated, patches[:32], num_refs=5, rng=0)).all()
    assert row_mean_std(generated) > 0


def test_cli_train_and_evaluate(tmp_path, capsys):
    common = ["--patch", "16", "16", "--patches", "64", "--read-time", "0"]
    assert main(["noise", "train", "--out", str(tmp_path / "m"), "--steps", "5", *common]) == 0
    assert main(["noise", "evaluate", "--model", str(tmp_path / "m"), "--steps", "5", "--json",
                 *common]) == 0  # fmt: skip
    assert '"pqmass_generated"' in capsys.readouterr().out


def test_train_resumes_only_a_model_of_its_own_kind_and_refuses_noiseless_darks(tmp_path,
                                                                               capsys):  # fmt: skip
    """A prior trained into a noise model's folder was trained on top of its weights, and the
    noise model's checkpoint removed (exit 0). Darks of one constant difference trained a model
    on zeros, and evaluate failed on them after sampling (ZeroDivisionError)."""
    small = ["--steps", "1", "--patches", "4", "--batch-size", "2", "--read-time", "0",
             "--patch", "8", "8"]  # fmt: skip
    model = tmp_path / "m"
    assert main(["noise", "train", "--out", str(model), *small]) == 0
    checkpoints = sorted(p.name for p in model.glob("checkpoint_*.pt"))
    capsys.readouterr()
    assert main(["noise", "train", "--out", str(model), "--prior", *small]) == 2
    assert "--out: expected a new folder, or one of a prior model to resume, found a noise " in (
        capsys.readouterr().err
    )
    assert sorted(p.name for p in model.glob("checkpoint_*.pt")) == checkpoints
    assert main(["noise", "train", "--out", str(model), *small]) == 0  # the same kind resumes
    capsys.readouterr()
    assert main(["noise", "simulate", "--out", str(tmp_path / "z"), "--rows", "64", "--reads",
                 "4", "--white", "0"]) == 0  # fmt: skip
    dark = str(next((tmp_path / "z").glob("apR-*.apz")))
    capsys.readouterr()
    shared = ["--steps", "1", "--read-time", "0", "--patch", "8", "8", "--darks", dark]
    for argv in (["train", "--out", str(tmp_path / "n"), "--patches", "4"],
                 ["evaluate", "--model", str(model), "--patches", "20"]):  # fmt: skip
        assert main(["noise", *argv, *shared]) == 2
        assert "reads: expected a dark with noise" in capsys.readouterr().err
    assert not (tmp_path / "n").exists()


def test_quiet_and_json_show_no_progress_bars_of_score_models(tmp_path, capsys):
    """score_models draws tqdm bars (training, sampling) with no option to turn them off:
    ``--quiet`` printed them among nothing but errors, ``--json`` against its "no progress"."""
    common = ["--patch", "16", "16", "--patches", "64", "--read-time", "0", "--steps", "2"]
    model = str(tmp_path / "m")
    assert main(["noise", "train", "--out", model, "--quiet", *common]) == 0
    assert capsys.readouterr() == ("", "")
    assert main(["noise", "evaluate", "--model", model, "--quiet", *common]) == 0
    assert capsys.readouterr() == ("", "")
    assert main(["noise", "evaluate", "--model", model, "--json", *common]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and "it/s" not in err and "%|" not in err
    assert main(["noise", "train", "--out", str(tmp_path / "n"), *common]) == 0
    assert "it/s" in capsys.readouterr().err  # the bars are there without those flags


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--nf", "2"], "--nf: expected a U-net width"),  # a ZeroDivisionError in score_models
        (["--nf", "36"], "--nf: expected a U-net width"),  # GroupNorm's channels
        (["--patch", "12", "6"], "--patch: expected rows and columns, multiples of 4"),
    ],
)
def test_cli_refuses_settings_the_network_cannot_take_before_any_work(tmp_path, capsys, flags,
                                                                      words):  # fmt: skip
    out = tmp_path / "m"
    assert main(["noise", "train", "--out", str(out), "--steps", "1", *flags]) == 2
    assert words in capsys.readouterr().err and not out.exists()


def test_cuda_without_a_cuda_device_is_refused_at_the_flag(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    out = tmp_path / "m"
    assert main(["noise", "train", "--out", str(out), "--device", "cuda"]) == 2
    assert "--device: expected cpu, or cuda where torch sees" in capsys.readouterr().err
    assert main(["noise", "evaluate", "--model", str(out), "--device", "cuda"]) == 2
    assert "--device" in capsys.readouterr().err and not out.exists()


def test_setting_problems_names_what_the_network_refuses():
    from pyapred.noise.sbm import setting_problems

    assert setting_problems(nf=16, patch=(32, 32)) == []
    assert [p[0] for p in setting_problems(nf=36, patch=(8, 8))] == ["nf"]
    assert [p[0] for p in setting_problems(nf=16, patch=(6, 8))] == ["patch"]
    with pytest.raises(ValueError, match="nf: expected"):
        train_score_model(np.zeros((4, 8, 8), np.float32), nf=36, steps=1)


def test_cli_refuses_what_failed_late_or_silently(tmp_path, capsys):
    """A fuzzing sitting's findings: each was a traceback after the work, a segfault, or an
    exit 0 with a broken or untrained model."""
    small = ["--steps", "1", "--patches", "4", "--batch-size", "2", "--read-time", "0"]
    model = tmp_path / "m"
    assert main(["noise", "train", "--out", str(model), *small, "--patch", "8", "8"]) == 0
    capsys.readouterr()
    refused = [
        (["noise", "train", "--out", str(model), *small, "--nf", "8"], "--nf: expected the width"),
        (["noise", "train", "--out", str(tmp_path / "n"), *small, "--log",
          str(tmp_path / "n" / "score_sheet.txt")], "--log: expected a file outside"),
        (["noise", "train", "--out", str(tmp_path / "g"), "--gain", "1e40"], "--gain"),
        (["noise", "train", "--out", str(tmp_path / "t"), "--threads", "100000"], "--threads"),
        (["noise", "evaluate", "--model", str(model), "--patches", "4"], "--patches: expected"),
        (["noise", "evaluate", "--model", str(tmp_path / "none")], "--model: expected a"),
    ]  # fmt: skip
    for argv, words in refused:
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse refuses a flag's value itself
            code = stop.code
        assert code == 2, argv
        assert words in capsys.readouterr().err
    weightless = tmp_path / "w"
    weightless.mkdir()
    (weightless / "model_hparams.json").write_text((model / "model_hparams.json").read_text())
    assert main(["noise", "evaluate", "--model", str(weightless)]) == 2
    assert "checkpoint_*.pt of trained weights" in capsys.readouterr().err
    (weightless / "model_hparams.json").write_text("{not json")
    assert main(["noise", "evaluate", "--model", str(weightless)]) == 2
    assert "settings as a JSON object" in capsys.readouterr().err
