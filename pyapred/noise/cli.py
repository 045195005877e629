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
    stress.add_argument("--fibres", type=int, default=8, help="fibres per exposure (8)")
    stress.add_argument("--column-step", type=int, default=8, help="every n-th column lit (8)")
    stress.add_argument(
        "--reference-columns",
        action="store_true",
        help="refcorr also uses the left/right reference columns (apogee_drp's recipe)",
    )
    stress.add_argument("--json", action="store_true", help="print JSON")
    _noise_arguments(stress)


def run(args: argparse.Namespace) -> int:
    if args.noise_command == "simulate":
        return _simulate(args)
    return _stress(args)


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
    return 0


def _stress(args: argparse.Namespace) -> int:
    from .stress import CASES, stress_test

    result = stress_test(
        args.exposures,
        n_fibres=args.fibres,
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
        return 0
    print(f"{'case':>18} {'bias (sigma)':>16} {'z std':>6}   pass: z std 1 +- 0.15, |bias| < 0.2")
    for case in CASES:
        bias, std, error = summary[case]
        verdict = "pass" if abs(std - 1) <= 0.15 and abs(bias) < 0.2 else "FAIL"
        print(f"{case:>18} {bias:>+8.2f} +- {error:.2f} {std:>6.2f}   {verdict}")
    return 0
