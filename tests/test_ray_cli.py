"""The `prefsweep` console script dispatches to the same `main`s that `ray job submit` runs."""

from __future__ import annotations

import pytest

from rayjobs import cli


def test_the_console_script_ends_with_finish_process():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "prefsweep"]
    assert script.value == "rayjobs.cli:entry"


def test_finish_process_leaves_exit_hooks_and_finalizers_to_run(tmp_path):
    """After `entry` (here `prefsweep --help`), what lived is in the collector's permanent generation, so the exit's
    collections skip it; atexit hooks and `weakref.finalize` (tempfile's clean-up) still run, after the command,
    and even for an object kept alive by a reference cycle; the exit code is the command's."""
    import subprocess
    import sys
    import textwrap

    from tests.script_output import tagged_json

    script = textwrap.dedent("""
        import atexit, gc, json, sys, weakref
        from pathlib import Path
        from rayjobs import cli

        out = Path(sys.argv[1])
        class Node: pass
        kept = Node(); kept.me = kept
        weakref.finalize(kept, (out / "finalized").write_text, "yes")
        atexit.register(lambda: (out / "atexit").write_text(str(gc.get_freeze_count())))
        tracked = len(gc.get_objects())
        sys.argv = ["prefsweep", "--help"]
        code = cli.entry()
        print("RESULT " + json.dumps({"tracked": tracked, "left": len(gc.get_objects()), "frozen": gc.get_freeze_count()}))
        sys.exit(code)
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    counts = tagged_json(done.stdout)
    tracked, left, frozen = counts["tracked"], counts["left"], counts["frozen"]
    assert frozen >= tracked > 1000 and left < 100  # everything alive at the end went to the permanent generation
    # at the atexit hook still frozen (less what was freed since: the few objects of the script's last lines)
    assert frozen - 20 <= int((tmp_path / "atexit").read_text()) <= frozen
    assert (tmp_path / "finalized").read_text() == "yes"


def test_a_python_without_prefsweeps_dependencies_is_named(tmp_path):
    """`ray job submit ... -- python -m rayjobs.sweep` on a head whose PATH finds another Python: one line names that
    Python and what it lacks, instead of a traceback deep in an import."""
    import subprocess
    import sys

    from tests.conftest import REPO

    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    python = bare / "bin" / "python"
    run = subprocess.run([str(python), "-m", "rayjobs.sweep", "sweeps/demo.yaml"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ImportError: prefsweep: this Python ({python}) has no torch, transformers, datasets, ray. ")
    assert "ray start --head` with prefsweep's virtualenv activated" in last


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
