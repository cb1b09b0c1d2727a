"""`prefsweep`: the console script.

    prefsweep train CONFIG.yaml [KEY=VALUE ...]     one run (Ray Train; use_ray=false: in-process)
    prefsweep sweep SWEEP.yaml [KEY=VALUE ...]      a Ray Tune sweep of Ray Train runs
    prefsweep tokenize CONFIG.yaml [KEY=VALUE ...]  tokenize the data, save it, show what is trained on
    prefsweep make-tiny-model OUT --data FILE ...   the offline tiny model for tests and the demo
    prefsweep make-tiny-reward-model OUT --base DIR --data DATASET   its Bradley-Terry reward model
    prefsweep mlflow-sync OUTPUT_DIR ...            replay what an MLflow outage kept in a run's spool

Each subcommand is its module's `main` (`python -m rayjobs.train`, `python -m rayjobs.sweep`,
`python -m trainer.tiny_model`), so what `ray job submit -- python -m ...` runs is the same code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

COMMANDS = {
    "train": ("rayjobs.train", "train one run from a config YAML"),
    "sweep": ("rayjobs.sweep", "run a sweep spec with Ray Tune"),
    "tokenize": ("trainer.data.preview", "tokenize a config's data, save it, print examples with the mask marked"),
    "make-tiny-model": ("trainer.tiny_model", "build the offline tiny Llama model and tokenizer"),
    "make-tiny-reward-model": ("trainer.reward_model", "train the offline tiny Bradley-Terry reward model"),
    "mlflow-sync": ("rayjobs.tracking.sync", "send MLflow what runs could not send (their mlflow_spool.jsonl), once"),
}


def usage() -> str:
    lines = ["usage: prefsweep COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:16s} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`prefsweep COMMAND --help` describes each command."]
    return "\n".join(lines)


def finish_process() -> None:
    """For a process that ran one command and is about to exit: the objects alive now (every module torch,
    transformers and Ray created, the model) go to the garbage collector's permanent generation, which the
    interpreter's last collections skip. The exit still runs every atexit hook (Ray's shutdown, logging's flush,
    `weakref.finalize`), flushes the standard streams and releases the modules; it no longer walks millions of
    objects that the operating system is about to free: ~1 s of a `prefsweep train` process's exit on 2 cores
    (1.0-1.1 s after importing the training stack, 0.15 s with this). Only where the process is the command's own
    (the console script, `python -m`), never inside a caller's interpreter."""
    import gc

    gc.freeze()


def as_own_process(command_main: Callable[[], int]) -> int:
    """Run a command's `main` as the work of the whole process (the console script, `python -m rayjobs.train`):
    its exit code, after `finish_process`."""
    code = command_main()
    finish_process()
    return code


def entry() -> int:
    """The `prefsweep` console script."""
    return as_own_process(main)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"prefsweep: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(entry())
