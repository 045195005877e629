import re

from pyapred.cli import main


def test_demo_runs_and_reports(tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path), "--fibers", "40", "--columns", "64", "--reads", "16"]
    assert main([*argv, "--chips", "R"]) == 0
    out = capsys.readouterr().out
    assert "omega R" in out and "z-score std" in out and "flux bias, chip R" in out
    z_std = float(re.search(r"z-score std ([0-9.]+)", out).group(1))
    assert 0.7 < z_std < 1.4
    constant = float(re.search(r"constant model ([-+0-9.]+) sigma", out).group(1))
    variable = float(re.search(r"time-variable ([-+0-9.]+) sigma", out).group(1))
    assert constant < -0.5 and abs(variable) < 0.15
    assert f"plots: {tmp_path / 'plots'}" in out
    assert len(list((tmp_path / "plots").glob("*.png"))) == 4
    assert (tmp_path / "product.h5").exists()
