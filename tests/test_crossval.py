import pytest

from pyapred import _julia
from pyapred.cli import main


def test_crossval_without_julia_exits_2_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(_julia, "_module", None)
    monkeypatch.setattr(_julia, "_failure", None)
    monkeypatch.setattr(_julia, "_missing_reason", lambda: "no Julia runtime: (test)")
    assert main(["crossval", "--vectors"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Julia runtime" in err


@pytest.mark.julia
def test_crossval_vectors_agree_with_julia(capsys):
    assert main(["crossval", "--vectors"]) == 0
    assert "max rel diff" in capsys.readouterr().out
