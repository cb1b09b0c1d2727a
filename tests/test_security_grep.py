"""No pickle deserialization in our code: `torch.load` only with `weights_only=True`, no `pickle.load`,
no `allow_pickle=True` (issue 5, secure defaults).

Unpickling runs code chosen by whoever wrote the file, so a checkpoint, cache or data file from a shared
disk could take over the trainer. Files are parsed (not grepped line by line) so a call split over lines
or a renamed import is still caught; this file is the only one allowed to spell the patterns out.
The tracked tree is `git ls-files` plus untracked files git does not ignore (work about to be committed).
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OUR_CODE = ("trainer/", "rayjobs/", "sweeps/", "benchmarks/")
THIS_FILE = Path(__file__).resolve().relative_to(REPO).as_posix()
# modules whose load functions unpickle
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
PICKLE_FUNCTIONS = {"load", "loads", "open", "Unpickler", "read_pickle"}
WEIGHTS_ONLY_FALSE = re.compile(r"weights_only\s*=\s*False")


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sorted({f for f in out.splitlines() if f and (REPO / f).is_file()})


def _dotted(node: ast.AST) -> str:
    """`torch.serialization.load` for the call's function, as far as it is a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _is_true(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str, filename: str = "<string>") -> list[str]:
    """`file:line: what` for each call that may unpickle: torch.load without weights_only=True, pickle-family
    loads, `allow_pickle=True` anywhere, pandas.read_pickle; import aliases followed."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> full dotted name
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        full = aliases.get(head, head) + (f".{rest}" if rest else "")
        where = f"{filename}:{node.lineno}"
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        module, _, function = full.rpartition(".")
        if full in ("torch.load", "torch.serialization.load"):
            if not _is_true(keywords.get("weights_only", ast.Constant(None))):
                found.append(f"{where}: {name}(...) without weights_only=True")
        elif module.split(".")[0] in PICKLE_MODULES and function in PICKLE_FUNCTIONS:
            found.append(f"{where}: {name}(...) unpickles")
        elif full in ("pandas.read_pickle", "pd.read_pickle") or function == "read_pickle":
            found.append(f"{where}: {name}(...) unpickles")
        if "allow_pickle" in keywords and not (
            isinstance(keywords["allow_pickle"], ast.Constant) and keywords["allow_pickle"].value is False
        ):
            found.append(f"{where}: {name}(..., allow_pickle=...)")
    return found


def test_the_checker_catches_each_pattern():
    """The detector itself, on hand-written offenders (so the tree test cannot pass by finding nothing)."""
    offenders = {
        "import torch\ntorch.load('x.pt')": "without weights_only=True",
        "import torch\ntorch.load('x.pt', weights_only=False)": "without weights_only=True",
        "import torch as t\nt.load(\n    'x.pt',\n    map_location='cpu',\n)": "without weights_only=True",
        "from torch import load\nload('x.pt', weights_only=None)": "without weights_only=True",
        "import pickle\npickle.load(open('x', 'rb'))": "unpickles",
        "import pickle as pk\npk.loads(b'')": "unpickles",
        "from pickle import loads\nloads(b'')": "unpickles",
        "import cloudpickle\ncloudpickle.loads(b'')": "unpickles",
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)": "allow_pickle",
        "import pandas as pd\npd.read_pickle('x.pkl')": "unpickles",
    }
    for source, expected in offenders.items():
        found = unsafe_calls(source)
        assert len(found) == 1 and expected in found[0], (source, found)
    safe = "import torch, numpy as np\ntorch.load('x.pt', weights_only=True)\nnp.load('x.npy')\nimport pickle\npickle.dumps(1)"
    assert unsafe_calls(safe) == []


def test_our_code_never_unpickles():
    files = [f for f in tracked_files() if f.endswith(".py") and f.startswith(OUR_CODE)]
    assert any(f.startswith("trainer/") for f in files), "no source files found: is this a git checkout?"
    found = []
    for f in files:
        found += unsafe_calls((REPO / f).read_text(encoding="utf-8"), f)
    assert found == [], "unsafe deserialization:\n" + "\n".join(found)


@pytest.mark.parametrize("suffix", [".py", ".sh", ".yaml", ".yml", ".toml", ".cfg", ".json"])
def test_no_weights_only_false_anywhere_in_the_tree(suffix):
    """Tests, scripts and configs included: nothing in the repository asks torch to unpickle."""
    hits = []
    for f in tracked_files():
        if f == THIS_FILE or not f.endswith(suffix):
            continue
        text = (REPO / f).read_text(encoding="utf-8", errors="replace")
        hits += [f"{f}:{text.count(chr(10), 0, m.start()) + 1}" for m in WEIGHTS_ONLY_FALSE.finditer(text)]
    assert hits == [], "weights_only=False in: " + ", ".join(hits)
