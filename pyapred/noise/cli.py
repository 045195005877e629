"""``pyapred noise``: simulate exposures with H2RG read noise, and run the 1/f stress test.

``pyapred noise simulate --out DIR [--one-over-f] ...`` writes a raw ``apR-*.apz`` (a dark, or a
flat with ``--flux``) with white read noise and, with ``--one-over-f``, the correlated noise of
:func:`~pyapred.noise.simulate_hxrg`. ``pyapred noise stress`` prints the four-case comparison of
:func:`~pyapred.noise.stress.stress_test`.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ..errors import EXIT_OK
from .hxrg import CHIP_ROWS, REFERENCE_BORDER, HxrgNoise


def _noise_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = HxrgNoise()
    parser.add_argument("--white", type=float, default=10.0, help="white read noise, e- (10)")
    for name, default in (("c-pink", 6.0), ("u-pink", 3.0), ("acn", 2.0)):
        parser.add_argument(
            f"--{name}",
            type=float,
            default=default,
            help=f"1/f amplitude within a read, e- ({default})",
        )
    parser.add_argument(
        "--read-time",
        type=float,
        default=defaults.read_time,
        help=f"seconds per read ({defaults.read_time}; 0 = reads back to back, cheaper)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")


def _noise(args: argparse.Namespace, one_over_f: bool = True) -> HxrgNoise:
    scale = 1.0 if one_over_f else 0.0
    return HxrgNoise(
        white=args.white,
        c_pink=scale * args.c_pink,
        u_pink=scale * args.u_pink,
        acn=scale * args.acn,
        read_time=args.read_time,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="noise_command", required=True)
    sim = sub.add_parser("simulate", help="write a raw .apz with H2RG read noise")
    sim.add_argument("--out", required=True, help="folder for the apR-*.apz file")
    sim.add_argument("--reads", type=int, default=10, help="reads (10)")
    sim.add_argument("--rows", type=int, default=CHIP_ROWS, help="chip rows from 0 (2048)")
    sim.add_argument("--flux", type=float, default=0.0, help="flat flux, e- per read (0: a dark)")
    sim.add_argument("--gain", type=float, default=1.9, help="e-/DN (1.9)")
    sim.add_argument("--one-over-f", action="store_true", help="add correlated (1/f) noise")
    sim.add_argument("--exposure", type=int, default=1, help="exposure number within the night")
    _noise_arguments(sim)
    stress = sub.add_parser("stress", help="the four-case 1/f stress test of fit_omega")
    stress.add_argument("--exposures", type=int, default=4, help="simulated exposures (4)")
    stress.add_argument("--fibers", type=int, default=8, help="fibers per exposure (8)")
    stress.add_argument("--column-step", type=int, default=8, help="every n-th column lit (8)")
    stress.add_argument(
        "--reference-columns",
        action="store_true",
        help="refcorr also uses the left/right reference columns (apogee_drp's recipe)",
    )
    stress.add_argument("--json", action="store_true", help="print JSON")
    _noise_arguments(stress)
    train = sub.add_parser("train", help="train a score model (needs the sbm extra)")
    train.add_argument("--darks", nargs="*", default=[], help="dark apR-*.apz (default: simulate)")
    train.add_argument("--out", required=True, help="checkpoint folder to write")
    train.add_argument("--prior", action="store_true", help="train the prior on clean traces")
    _model_arguments(train)
    train.add_argument("--steps", type=int, default=2000, help="optimiser steps (2000)")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--nf", type=int, default=16, help="U-net base width (16)")
    evaluate = sub.add_parser("evaluate", help="compare a noise model with held-out darks")
    evaluate.add_argument("--model", required=True, help="checkpoint folder of a noise model")
    evaluate.add_argument("--darks", nargs="*", default=[], help="held-out darks (default: sim.)")
    _model_arguments(evaluate)
    evaluate.add_argument("--steps", type=int, default=300, help="sampler steps (300)")
    evaluate.add_argument("--json", action="store_true", help="print JSON")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patch", type=int, nargs=2, default=(32, 32), metavar=("ROWS", "COLS"))
    parser.add_argument("--patches", type=int, default=1024, help="patches to use (1024)")
    parser.add_argument("--gain", type=float, default=1.9, help="e-/DN of real darks (1.9)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    _noise_arguments(parser)


def run(args: argparse.Namespace) -> int:
    commands = {"simulate": _simulate, "stress": _stress, "train": _train, "evaluate": _evaluate}
    return commands[args.noise_command](args)


def _dark_patches(args: argparse.Namespace, seed: int) -> np.ndarray:
    """Patches of non-overlapping dark read differences (r2 - r1, r4 - r3, ...) in e-."""
    from .hxrg import simulate_hxrg
    from .sbm import dark_patches

    patches = []
    if args.darks:
        from ..io import read_apz

        for name in args.darks:
            reads = read_apz(name).reads.astype(np.float64) * args.gain
            pairs = 2 * (len(reads) // 2)
            patches.append(dark_patches(reads[1:pairs:2] - reads[0:pairs:2], args.patch))
    else:
        n_rows = 1024
        per_frame = (n_rows // args.patch[0]) * (512 // args.patch[1])
        n_frames = -(-args.patches // per_frame)
        reads = simulate_hxrg(2 * n_frames, _noise(args), rows=slice(4, 4 + n_rows), rng=seed)
        patches.append(dark_patches(reads[1::2] - reads[0::2], args.patch))
    return np.concatenate(patches)[: args.patches]


def _train(args: argparse.Namespace) -> int:
    from .sbm import trace_patches, train_score_model

    if args.prior:
        data = trace_patches(args.patches, tuple(args.patch), rng=args.seed)
    else:
        data = _dark_patches(args, args.seed)
    train_score_model(
        data, args.out, steps=args.steps, batch_size=args.batch_size, nf=args.nf,
        device=args.device, seed=args.seed, threads=args.threads,
    )  # fmt: skip
    print(f"{args.out}: {'prior' if args.prior else 'noise'} model, {len(data)} patches")
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import pqmass, psd_slope, row_mean_std
    from .sbm import load_score_model, posterior_samples

    held_out = _dark_patches(args, args.seed + 1)
    model = load_score_model(args.model, device=args.device, threads=args.threads)
    generated = posterior_samples(
        np.zeros(held_out.shape[1:]), model, None, n_samples=len(held_out), steps=args.steps
    )
    white = np.random.default_rng(args.seed).normal(0, held_out.std(), held_out.shape)
    dof = 9
    result = {
        "pqmass_generated": float(pqmass(generated, held_out, num_refs=dof + 1,
                                         re_tessellation=20, rng=0).mean()),
        "pqmass_white": float(pqmass(white, held_out, num_refs=dof + 1,
                                     re_tessellation=20, rng=0).mean()),
        "pqmass_dof": dof,
        "row_mean_std_ratio": row_mean_std(generated) / row_mean_std(held_out),
        "psd_slope_generated": psd_slope(generated),
        "psd_slope_held_out": psd_slope(held_out),
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value:.3f}")
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    from ..simulate import simulate_ramps, write_simulated_apz

    rng = np.random.default_rng(args.seed)
    flux = np.zeros((args.rows, 2560))
    inner = slice(REFERENCE_BORDER, 2048 - REFERENCE_BORDER)
    flux[: CHIP_ROWS - REFERENCE_BORDER, inner] = args.flux
    flux[:REFERENCE_BORDER] = 0.0
    reads = simulate_ramps(flux, 0.0, n_reads=args.reads, rng=rng).reads / args.gain
    noise = _noise(args, args.one_over_f)
    amplitudes = ("white", "c_pink", "u_pink", "acn")
    in_dn = HxrgNoise(
        **{**noise.__dict__, **{k: getattr(noise, k) / args.gain for k in amplitudes}}
    )
    header = {"EXPTYPE": "DARK" if args.flux == 0 else "INTERNALFLAT", "GAIN": args.gain}
    path = write_simulated_apz(
        args.out, reads, exposure=args.exposure, header=header, one_over_f=in_dn, rng=rng
    )
    print(path)
    return EXIT_OK


def _stress(args: argparse.Namespace) -> int:
    from .stress import CASES, stress_test

    result = stress_test(
        args.exposures,
        n_fibers=args.fibers,
        column_step=args.column_step,
        noise=_noise(args),
        refcorr_options={"reference_columns": args.reference_columns},
        rng=args.seed,
    )
    summary = result.summary()
    if args.json:
        keys = ("bias", "z_std", "bias_error")
        print(
            json.dumps(
                {case: dict(zip(keys, values, strict=True)) for case, values in summary.items()}
            )
        )
        return EXIT_OK
    print(f"{'case':>18} {'bias (sigma)':>16} {'z std':>6}   pass: z std 1 +- 0.15, |bias| < 0.2")
    for case in CASES:
        bias, std, error = summary[case]
        verdict = "pass" if abs(std - 1) <= 0.15 and abs(bias) < 0.2 else "FAIL"
        print(f"{case:>18} {bias:>+8.2f} +- {error:.2f} {std:>6.2f}   {verdict}")
    return EXIT_OK
