"""The `prefsweep` console script dispatches to the same `main`s that `ray job submit` runs."""

from __future__ import annotations

import pytest

from rayjobs import cli


def test_help_lists_the_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "sweep", "make-tiny-model"):
        assert command in out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["swep"]) == 2
    assert "unknown command 'swep'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "sweep", "make-tiny-model"])
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert f"prefsweep {command}" in capsys.readouterr().out


def test_bad_sweep_spec_exits_2_with_the_reason(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("base: configs/tiny_dpo.yaml\nnum_sample: 3\n")
    assert cli.main(["sweep", str(spec)]) == 2
    assert "did you mean 'num_samples'?" in capsys.readouterr().err


def test_bad_train_override_exits_2_with_the_reason(capsys):
    assert cli.main(["train", "configs/tiny_dpo.yaml", "pref_bta=0.2"]) == 2
    assert "pref_bta" in capsys.readouterr().err
