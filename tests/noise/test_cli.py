"""pyapred noise simulate / stress."""

import json

import numpy as np

from pyapred.cli import main
from pyapred.io import read_apz


def test_simulate_writes_a_raw_exposure_with_1f_noise(tmp_path, capsys):
    args = ["noise", "simulate", "--out", str(tmp_path), "--reads", "3", "--rows", "16",
            "--read-time", "0", "--flux", "200"]  # fmt: skip
    assert main([*args, "--one-over-f"]) == 0
    path = capsys.readouterr().out.strip()
    raw = read_apz(path)
    assert raw.reads.shape == (3, 16, 2560)
    diffs = np.diff(raw.reads.astype(float), axis=0)
    # 200 e- per read at gain 1.9 on the lit pixels; the reference output stays dark.
    assert abs(np.median(diffs[:, 4:12, 4:2044]) - 200 / 1.9) < 3
    assert abs(np.median(diffs[..., 2048:])) < 3
    assert main([*args, "--exposure", "2"]) == 0  # white noise only: smaller row offsets
    plain = np.diff(read_apz(capsys.readouterr().out.strip()).reads.astype(float), axis=0)
    row_std = lambda d: d[..., 2048:].mean(axis=-1).std()  # noqa: E731
    assert row_std(diffs) > 2 * row_std(plain)


def test_stress_json(capsys):
    assert main(["noise", "stress", "--exposures", "1", "--fibers", "2", "--read-time", "0",
                 "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {
        "no_1f", "uncorrected", "refcorr", "nuisance", "refcorr_nuisance", "rowmedian"
    }  # fmt: skip
    assert all(np.isfinite(v["z_std"]) for v in summary.values())
