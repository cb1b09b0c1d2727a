"""What a test's subprocess script printed for the test to read."""

from __future__ import annotations

import json


def tagged_json(stdout: str, tag: str = "RESULT ") -> dict:
    """The JSON a script printed on its first line starting with `tag`."""
    return json.loads(next(line for line in stdout.splitlines() if line.startswith(tag))[len(tag):])
