"""prefsweep's entry points for Ray and the CLI (the only code that imports ray or mlflow).

Importing the package first checks that this Python has prefsweep's main dependencies. Under `ray job submit`
the entrypoint's `python` is whatever the Ray head's PATH finds: a head started without prefsweep's virtualenv
activated runs the job with a Python that has none of them, and the job would end in a traceback deep in an
import. `python -m rayjobs.sweep` (or `.train`) then prints one line naming the Python and what it lacks.
"""

from __future__ import annotations


def _require_dependencies() -> None:
    import importlib.util
    import sys

    # in sys.modules already (or hidden there on purpose as None): not for this check to judge
    missing = [name for name in ("torch", "transformers", "datasets", "ray")
               if name not in sys.modules and importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"prefsweep: this Python ({sys.executable}) has no {', '.join(missing)}. Run prefsweep with the Python "
            "it was installed into; under `ray job submit` the job runs the `python` found on the Ray head's PATH: "
            "start `ray start --head` with prefsweep's virtualenv activated, or name its Python in the entrypoint "
            "(`-- /path/to/.venv/bin/python -m rayjobs.sweep ...`)")


_require_dependencies()
