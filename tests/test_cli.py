from pyapred.cli import main


def test_demo_runs_and_reports(capsys):
    assert main(["demo", "--pixels", "60", "--reads", "12"]) == 0
    out = capsys.readouterr().out
    assert "omega fit" in out and "error-inflation factor" in out
