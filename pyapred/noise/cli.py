"""``pyapred noise``: simulate exposures with H2RG read noise, and run the 1/f stress test.

``pyapred noise simulate --out DIR [--one-over-f] ...`` writes a raw ``apR-*.apz`` (a dark, or a
flat with ``--flux``) with white read noise and, with ``--one-over-f``, the correlated noise of
:func:`~pyapred.noise.simulate_hxrg`. ``pyapred noise stress`` prints the four-case comparison of
:func:`~pyapred.noise.stress.stress_test`. Every sub-subcommand takes the output flags of
:mod:`pyapred.cli` (``--json``, ``--quiet``, ``--verbose``, ``--log``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..arguments import MAX_READS, MAX_SEED, at_least, json_line, path_argument
from ..errors import EXIT_FLAGGED, EXIT_OK, InputError
from ..io.atomic import atomic_path
from .hxrg import CHIP_ROWS, REFERENCE_BORDER, HxrgNoise, simulate_hxrg_bytes
from .segments import DEFAULT_SEGMENT_COLUMNS
from .stress import INNER

log = logging.getLogger(__name__)


def _segment_columns(text: str) -> int:
    """An argparse type: a divisor of an output's 512 columns other than 1."""
    from .segments import check_segment_columns

    try:
        value = int(text)
        check_segment_columns(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a divisor of 512 other than 1, got {text!r}"
        ) from None
    return value


def _non_negative(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (np.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _at_most(maximum: float, kind):
    """An argparse type: what ``kind`` takes, up to ``maximum``."""

    def parse(text: str) -> float:
        value = kind(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"expected at most {maximum:g}, got {text!r}")
        return value

    return parse


def _gain(text: str) -> float:
    """An argparse type: a gain pyapred's readers take (``CALIBRATION_BOUNDS``, e-/DN)."""
    from ..exposure.inputs import CALIBRATION_BOUNDS

    low, high = CALIBRATION_BOUNDS["gain"]
    value = _positive(text)
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected a gain in [{low:g}, {high:g}], got {text!r}")
    return value


def _positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


#: The largest noise amplitude (e-) the commands take: far beyond a detector's (about 10 e-;
#: 1e308 overflowed to NaN and inf, cast into every pixel as 0 or 65535, exit 0). What a raw
#: frame holds depends on the gain too: ``noise simulate`` also bounds the noise in DN
#: (:data:`MAX_NOISE_DN`).
MAX_NOISE = 1e5
#: The largest read noise ``noise simulate`` writes, DN: 5 sigma within the raw frames' bias
#: (``write_simulated_apz``'s 10000 DN), so that almost no read is clipped at 0 (1e5 e- at a
#: gain of 0.01 left 60 % of the pixels at 0 and 40 % at 65535, exit 0).
MAX_NOISE_DN = 2000.0
#: The longest read the commands simulate, s (APOGEE's take 10.6 s): the 1/f noise is drawn at
#: the pixel rate over the whole read, so its memory grows with it (1000 s: 8 GiB for 2 fibers).
MAX_READ_TIME = 30.0
#: The most optimiser or sampler steps ``noise train`` and ``evaluate`` take (10**29 was taken,
#: and ran until killed); a million is days on a CPU.
MAX_STEPS = 1_000_000
#: The most patches ``noise train`` and ``evaluate`` take (10**30 overflowed inside SciPy's FFT,
#: 10**8 of 4 x 4 asked for 49 GiB).
MAX_PATCHES = 1_000_000


def _noise_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = HxrgNoise()
    parser.add_argument(
        "--white", type=_at_most(MAX_NOISE, _non_negative), default=10.0,
        help=f"white read noise, e-, up to {MAX_NOISE:g} (10)",
    )  # fmt: skip
    for name, what in (
        ("c-pink", "correlated 1/f noise shared by the five outputs (the reference output too)"),
        ("u-pink", "uncorrelated 1/f noise of each output"),
        ("acn", "alternating column noise (even/odd columns)"),
    ):
        default = _DEFAULT_AMPLITUDES[name.replace("-", "_")]
        parser.add_argument(
            f"--{name}",
            type=_at_most(MAX_NOISE, _non_negative),
            default=default,
            help=f"{what}, e- per read, up to {MAX_NOISE:g} ({default})",
        )
    parser.add_argument(
        "--read-time",
        type=_at_most(MAX_READ_TIME, _non_negative),  # 1000 s asked for 8 GiB and more
        default=defaults.read_time,
        help=f"seconds per read, up to {MAX_READ_TIME:g} ({defaults.read_time}; 0 = reads back to "
        "back, cheaper)",
    )
    parser.add_argument("--seed", type=at_least(0, MAX_SEED), default=0, help="random seed (0)")


#: The 1/f amplitudes' defaults (``_noise_arguments``), e- per read.
_DEFAULT_AMPLITUDES = {"c_pink": 6.0, "u_pink": 3.0, "acn": 2.0}


@contextlib.contextmanager
def _score_models_output(args: argparse.Namespace) -> Iterator[None]:
    """What score_models prints, as the output flags say. With ``--json``, its lines ("Using the
    Variance Exploding SDE", ...) go to stderr: stdout holds the JSON line and nothing else.
    Without progress (``--quiet``, ``--json``), its progress bars (tqdm's, written to
    ``sys.stderr``, with no option to turn them off) are dropped. Warnings and the log are
    untouched (their handlers hold the real stderr), but for torch's note on score_models' code."""
    import warnings

    with contextlib.ExitStack() as stack:
        # torch's note on score_models' own code (it reads a loss that carries a gradient as a
        # number), with its source line: nothing the user can act on.
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")
        if getattr(args, "json", False):
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        if not getattr(args, "progress", True):
            sink = stack.enter_context(open(os.devnull, "w", encoding="utf-8"))
            stack.enter_context(contextlib.redirect_stderr(sink))
        yield


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
    sim.add_argument("--out", required=True, type=path_argument,
                     help="folder for the apR-*.apz file")  # fmt: skip
    sim.add_argument(
        "--reads", type=at_least(2, MAX_READS), default=10, help=f"reads, 2 to {MAX_READS} (10)"
    )
    sim.add_argument(
        "--rows", type=at_least(1, CHIP_ROWS), default=CHIP_ROWS, help="chip rows from 0 (2048)"
    )
    sim.add_argument(
        "--flux",
        type=_at_most(1e7, _non_negative),
        default=0.0,
        help="flat flux, e- per read, up to 1e7 (0: a dark)",
    )
    sim.add_argument(
        "--gain", type=_gain, default=1.9, help="e-/DN, 0.01 to 100 as pyapred fit takes (1.9)"
    )
    sim.add_argument("--one-over-f", action="store_true", help="add correlated (1/f) noise")
    sim.add_argument("--overwrite", action="store_true", help="replace an existing file")
    sim.add_argument(
        "--exposure",
        type=at_least(1, 9999),
        default=1,
        help="exposure number within the night, 1 to 9999 (the file name's four digits; 1)",
    )
    _noise_arguments(sim)
    stress = sub.add_parser("stress", help="the four-case 1/f stress test of fit_omega")
    stress.add_argument(
        "--exposures", type=at_least(1, 1000), default=4, help="simulated exposures (4)"
    )
    stress.add_argument(
        "--fibers", type=at_least(1, 300), default=8, help="fibers per exposure, 1 to 300 (8)"
    )
    stress.add_argument(
        "--column-step", type=at_least(1, INNER.stop - INNER.start), default=8,
        help=f"every n-th column lit, 1 to {INNER.stop - INNER.start} (8)",
    )  # fmt: skip
    stress.add_argument(
        "--segment-columns", type=_segment_columns, default=DEFAULT_SEGMENT_COLUMNS,
        help="columns per nuisance segment, as pyapred fit's --segment-columns "
        f"({DEFAULT_SEGMENT_COLUMNS})",
    )  # fmt: skip
    stress.add_argument(
        "--reference-columns",
        action="store_true",
        help="refcorr also uses the left/right reference columns (apogee_drp's recipe)",
    )
    _noise_arguments(stress)
    train = sub.add_parser("train", help="train a score model (needs the sbm extra)")
    train.add_argument("--darks", nargs="*", default=[], help="dark apR-*.apz (default: simulate)")
    train.add_argument("--out", required=True, type=path_argument,
                       help="checkpoint folder to write")  # fmt: skip
    train.add_argument("--prior", action="store_true", help="train the prior on clean traces")
    _model_arguments(train)
    train.add_argument("--steps", type=at_least(1, MAX_STEPS), default=2000,
                       help=f"optimiser steps, up to {MAX_STEPS} (2000)")  # fmt: skip
    train.add_argument("--batch-size", type=at_least(1), default=32, help="patches per step (32)")
    train.add_argument("--nf", type=at_least(1, 256), default=16, help="U-net base width (16)")
    evaluate = sub.add_parser("evaluate", help="compare a noise model with held-out darks")
    evaluate.add_argument("--model", required=True, help="checkpoint folder of a noise model")
    evaluate.add_argument("--darks", nargs="*", default=[], help="held-out darks (default: sim.)")
    _model_arguments(evaluate)
    evaluate.add_argument("--steps", type=at_least(1, MAX_STEPS), default=300,
                          help=f"sampler steps, up to {MAX_STEPS} (300)")  # fmt: skip


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--patch", type=at_least(4, 256), nargs=2, default=(32, 32), metavar=("ROWS", "COLS"),
        help="patch size, rows and columns (32 32)",
    )  # fmt: skip
    parser.add_argument("--patches", type=at_least(1, MAX_PATCHES), default=1024,
                        help=f"patches to use, up to {MAX_PATCHES} (1024)")  # fmt: skip
    parser.add_argument("--gain", type=_gain, default=1.9, help="e-/DN of real darks (1.9)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch device")
    parser.add_argument("--threads", type=at_least(1, 64), default=1, help="torch threads (1)")
    _noise_arguments(parser)


def run(args: argparse.Namespace) -> int:
    commands = {"simulate": _simulate, "stress": _stress, "train": _train, "evaluate": _evaluate}
    return commands[args.noise_command](args)


def _check_simulated_noise(args: argparse.Namespace) -> None:
    """Simulated darks (no ``--darks``) need noise: of zeros, a noise model learns nothing and
    ``evaluate`` divided by their zero row-mean scatter after minutes of sampling."""
    amplitudes = ("white", "c_pink", "u_pink", "acn")
    if not args.darks and all(getattr(args, name) == 0 for name in amplitudes):
        raise InputError("--white", "--white, --c-pink, --u-pink, --acn",
                         "some noise for the simulated darks (or real ones with --darks)",
                         "all 0")  # fmt: skip


def _dark_patches(args: argparse.Namespace, seed: int) -> np.ndarray:
    """Patches of non-overlapping dark read differences (r2 - r1, r4 - r3, ...) in e-."""
    from .hxrg import simulate_hxrg
    from .sbm import dark_patches

    patches = []
    if args.darks:
        from ..io import read_apz
        from ..io.paths import check_input_file

        darks = [check_input_file(name, "--darks") for name in args.darks]  # a FIFO hung it
        for name in darks:
            reads = read_apz(name).reads.astype(np.float64) * args.gain
            pairs = 2 * (len(reads) // 2)
            diffs = reads[1:pairs:2] - reads[0:pairs:2]
            if diffs.size and not np.ptp(diffs) > 0:
                # A noise model learns nothing of it, and evaluate divided by its zero
                # row-mean scatter after the sampling (a ZeroDivisionError traceback).
                raise InputError(name, "reads", "a dark with noise (read differences that "
                                 "vary)", "the same difference everywhere")  # fmt: skip
            patches.append(dark_patches(diffs, args.patch))
    else:
        n_rows = 1024
        per_frame = (n_rows // args.patch[0]) * (512 // args.patch[1])
        n_frames = -(-args.patches // per_frame)
        reads = simulate_hxrg(2 * n_frames, _noise(args), rows=slice(4, 4 + n_rows), rng=seed)
        patches.append(dark_patches(reads[1::2] - reads[0::2], args.patch))
    data = np.concatenate(patches)[: args.patches]
    if len(data) == 0:  # darks smaller than one patch
        source = args.darks[0] if args.darks else "the simulated frames"
        raise InputError("--patch", "--patch", "a patch size that fits in the darks' images",
                         f"{tuple(args.patch)}: no patch in {source}")  # fmt: skip
    return data


def _train(args: argparse.Namespace) -> int:
    from ..io.paths import check_output_path
    from .sbm import trace_patches, train_score_model

    check_output_path(args.out, "--out", folder=True)  # before the data and the training
    _check_model_settings(args, nf=args.nf)
    if not args.prior:
        _check_simulated_noise(args)
    kind = "prior" if args.prior else "noise"
    earlier = Path(args.out) / "model_hparams.json"
    if earlier.is_file():  # training resumes there: with the same network only
        # ... and the same kind of model: a prior trained on top of a noise model's weights
        # mixed the two, and score_models removed the noise model's checkpoint.
        there = _model_kind(Path(args.out))
        if there != kind:
            raise InputError(args.out, "--out", f"a new folder, or one of a {kind} model to "
                             f"resume", f"a {there} model" if there else "a model of no "
                             f"recorded kind ({MODEL_KIND_FILE} missing)")  # fmt: skip
        try:
            width = json.loads(earlier.read_text(encoding="utf-8")).get("nf")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            width = "unreadable settings"
        if width != args.nf:
            raise InputError(earlier, "--nf", f"the width of the model trained there ({width})",
                             f"--nf {args.nf}: pass it, or another --out")  # fmt: skip
    log_file = getattr(args, "log", None)
    if log_file is not None and Path(args.out).resolve() in Path(log_file).resolve().parents:
        # score_models writes its own files there (score_sheet.txt, ...), by their names
        raise InputError(log_file, "--log", "a file outside the checkpoint folder --out",
                         f"one in {args.out}")  # fmt: skip

    if args.prior:
        data = trace_patches(args.patches, tuple(args.patch), rng=args.seed)
    else:
        data = _dark_patches(args, args.seed)
    log.info("pyapred noise train: %s model, %d patches, %d steps", kind, len(data), args.steps)
    with _score_models_output(args):
        train_score_model(
            data, args.out, steps=args.steps, batch_size=args.batch_size, nf=args.nf,
            device=args.device, seed=args.seed, threads=args.threads,
        )  # fmt: skip
    with atomic_path(Path(args.out) / MODEL_KIND_FILE, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")
    if args.json:
        print(json_line({"checkpoint": str(args.out), "model": kind, "patches": len(data)}))
    else:
        print(f"{args.out}: {kind} model, {len(data)} patches")
    return EXIT_OK


#: The file in a checkpoint folder that says which model was trained there ("noise", "prior").
MODEL_KIND_FILE = "pyapred_model.json"


def _model_kind(folder: Path) -> str | None:
    """The kind of model trained in ``folder`` (``MODEL_KIND_FILE``), or None."""
    try:
        kind = json.loads((folder / MODEL_KIND_FILE).read_text(encoding="utf-8")).get("kind")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return kind if kind in ("noise", "prior") else None


#: Degrees of freedom of ``noise evaluate``'s PQMass comparisons (references - 1).
EVALUATION_DOF = 9


def _check_model_settings(args: argparse.Namespace, nf: int | None = None) -> None:
    """What torch or the U-net would refuse after the data are made (an error from deep inside
    score_models), refused at the flag."""
    from .sbm import setting_problems

    for argument, expected, found in setting_problems(
        nf=nf, patch=tuple(args.patch), device=args.device, threads=args.threads
    ):
        raise InputError(f"--{argument}", f"--{argument}", expected, found)


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import pqmass, psd_slope, row_mean_std
    from .sbm import check_checkpoint, load_score_model, posterior_samples

    _check_model_settings(args)
    _check_simulated_noise(args)
    if args.patches < 2 * (EVALUATION_DOF + 1):  # PQMass draws its references from them
        raise InputError("--patches", "--patches",
                         f"at least {2 * (EVALUATION_DOF + 1)} patches to compare",
                         str(args.patches))  # fmt: skip
    check_checkpoint(args.model)  # before the held-out darks are made
    held_out = _dark_patches(args, args.seed + 1)
    log.info("pyapred noise evaluate: %d samples, %d sampler steps", len(held_out), args.steps)
    with _score_models_output(args):
        model = load_score_model(args.model, device=args.device, threads=args.threads)
        generated = posterior_samples(
            np.zeros(held_out.shape[1:]), model, None, n_samples=len(held_out), steps=args.steps
        )
    white = np.random.default_rng(args.seed).normal(0, held_out.std(), held_out.shape)
    dof = EVALUATION_DOF
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
        print(json_line(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value:.3f}")
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    from ..io.apz import ApzName
    from ..io.paths import check_output_path, physical_memory
    from ..simulate import simulate_ramps, write_simulated_apz

    # The file it will write, before the reads are simulated (an existing one said "pass
    # --overwrite" after the work, and the flag did not exist).
    target = Path(args.out) / ApzName.from_night("apo", "a", 60781, args.exposure).filename
    check_output_path(target, "--out", overwrite=args.overwrite)
    if not args.one_over_f:  # they were ignored, silently
        for name in ("c_pink", "u_pink", "acn"):
            flag = "--" + name.replace("_", "-")
            if getattr(args, name) != _DEFAULT_AMPLITUDES[name]:
                raise InputError(flag, flag, "--one-over-f with it (without, no 1/f noise is "
                                 "added)", repr(getattr(args, name)))  # fmt: skip
    noise = _noise(args, args.one_over_f)
    amplitudes = ("white", "c_pink", "u_pink", "acn")
    in_dn = HxrgNoise(
        **{**noise.__dict__, **{k: getattr(noise, k) / args.gain for k in amplitudes}}
    )
    sigma_dn = float(np.sqrt(sum(getattr(in_dn, k) ** 2 for k in amplitudes)))
    if sigma_dn > MAX_NOISE_DN:
        raise InputError("--white", "--white, --c-pink, --u-pink, --acn, --gain",
                         f"a read noise of at most {MAX_NOISE_DN:g} DN (5 sigma within the raw "
                         "frames' bias)", f"{sigma_dn:.3g} DN (e- / --gain)")  # fmt: skip
    # The reads are simulated in float64, two copies at least: --reads 1000 with the chip's
    # 2048 rows asked for 39 GiB at once, a MemoryError traceback after the flags were taken.
    # The 1/f noise's time streams grow with --read-time instead (22 GiB for one row of 1000
    # reads of 30 s).
    needed = 2 * args.reads * args.rows * 2560 * 8
    needed += simulate_hxrg_bytes(args.reads, in_dn, rows=slice(0, args.rows))
    memory = physical_memory()
    if needed > memory:
        expected = f"a simulation that fits in memory ({memory / 2**30:.0f} GiB)"
        found = f"{args.reads} reads x {args.rows} rows: {needed / 2**30:.0f} GiB"
        if args.one_over_f:
            found += f" with the 1/f noise of {args.read_time:g} s reads"
        field = "--reads, --rows, --read-time" if args.one_over_f else "--reads, --rows"
        raise InputError("--reads, --rows", field, expected, found)
    rng = np.random.default_rng(args.seed)
    flux = np.zeros((args.rows, 2560))
    inner = slice(REFERENCE_BORDER, 2048 - REFERENCE_BORDER)
    flux[: CHIP_ROWS - REFERENCE_BORDER, inner] = args.flux
    flux[:REFERENCE_BORDER] = 0.0
    reads = simulate_ramps(flux, 0.0, n_reads=args.reads, rng=rng).reads / args.gain
    header = {"EXPTYPE": "DARK" if args.flux == 0 else "INTERNALFLAT", "GAIN": args.gain}
    path = write_simulated_apz(
        args.out, reads, exposure=args.exposure, header=header, one_over_f=in_dn, rng=rng,
        overwrite=args.overwrite,
    )  # fmt: skip
    print(json_line({"apz": str(path)}) if args.json else path)
    return EXIT_OK


def _stress(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..solver.api import SCALE_RANGE
    from .stress import CASES, StressResult, fewest_segment_pixels, stress_test

    low = SCALE_RANGE[0]
    if args.white < low:  # the fits take the white noise as their read noise
        raise InputError("--white", "--white", f"a white read noise of at least {low:g} (the "
                         "fits' read noise)", repr(args.white))  # fmt: skip
    fewest = fewest_segment_pixels(args.column_step, args.segment_columns)
    if fewest < 2:  # each offset would take all of one pixel's data: NaN z-scores, exit 1
        raise InputError("--column-step", "--column-step, --segment-columns",
                         "2 or more lit pixels in every readout segment (the nuisance cases)",
                         f"{fewest}: a lit column every {args.column_step}, "
                         f"{args.segment_columns} columns a segment")  # fmt: skip
    if args.exposures * args.fibers < 2:  # the bias error is the scatter of the fibers' means
        raise InputError("--fibers", "--exposures, --fibers", "at least 2 fibers in all (the bias "
                         "error is the scatter of their means)",
                         f"{args.exposures} x {args.fibers}")  # fmt: skip
    # One exposure at a time from one generator: the same numbers as stress_test(n), with a
    # progress bar (an exposure of 8 fibers takes about 10 s).
    rng = np.random.default_rng(args.seed)
    parts = []
    bar = tqdm(range(args.exposures), desc="pyapred noise stress", unit="exposure",
               disable=not getattr(args, "progress", True))  # fmt: skip
    for _ in bar:
        parts.append(
            stress_test(
                1, n_fibers=args.fibers, column_step=args.column_step, noise=_noise(args),
                refcorr_options={"reference_columns": args.reference_columns},
                segment_columns=args.segment_columns, rng=rng,
            )
        )  # fmt: skip
    result = StressResult(
        z={case: np.concatenate([p.z[case] for p in parts]) for case in parts[0].z},
        omega=parts[0].omega,
    )
    summary = result.summary()
    verdicts = {case: _stress_verdict(*summary[case]) for case in summary}
    failed = [case for case in MUST_PASS if verdicts.get(case) == "FAIL"]
    if args.json:
        keys = ("bias", "z_std", "bias_error")
        print(json_line({
            case: {**dict(zip(keys, values, strict=True)), "verdict": verdicts[case],
                   "must_pass": case in MUST_PASS}
            for case, values in summary.items()
        }))  # fmt: skip
        return EXIT_FLAGGED if failed else EXIT_OK
    print(f"{'case':>18} {'bias (sigma)':>16} {'z std':>6}   pass: z std 1 +- 0.15, |bias| < 0.2 "
          "+ 2 x its error")  # fmt: skip
    for case in CASES:
        bias, std, error = summary[case]
        note = "" if case in MUST_PASS else "  (shows the harm: not a check)"
        print(f"{case:>18} {bias:>+8.2f} +- {error:.2f} {std:>6.2f}   {verdicts[case]}{note}")
    if failed:
        print(f"pyapred noise stress: FAILED: {', '.join(failed)} must pass")
    return EXIT_FLAGGED if failed else EXIT_OK


#: The stress cases the omega fit must pass (exit code 1 otherwise); the others show what 1/f
#: noise does without the nuisance term, and fail by design.
MUST_PASS = ("no_1f", "nuisance", "refcorr_nuisance")


def _stress_verdict(bias: float, std: float, error: float) -> str:
    """``"pass"`` or ``"FAIL"``: z std within 0.15 of 1, and the bias not shown beyond 0.2 sigma
    (it may exceed 0.2 by up to twice its own standard error: with the defaults that error is
    0.1-0.2, and a bar of 0.2 alone passed or failed the same code by the seed)."""
    return "pass" if abs(std - 1) <= 0.15 and abs(bias) < 0.2 + 2.0 * error else "FAIL"
