"""Validating a config in a process that will not train it (a Ray driver) without importing model code.

`validate` builds a `TrainingArguments` to check the training keys, and on the way transformers imports
two things a driver never uses:

- PEFT: `transformers.trainer_utils` imports it (when installed) to recognise PEFT models, and PEFT in
  turn imports transformers' model code (`modeling_utils`, generation, a model class): ~1.9 s;
- its integrations registry: `TrainingArguments.__post_init__` imports `is_kubeflow_available` from
  `transformers.integrations`, whose module imports `PreTrainedModel`: ~1.3 s more.

Together (they share most of the model code) that is ~2.5 s of the driver's Python on the way to the first
step, under one GIL with Ray's start. `for_a_driver()` runs the checks with PEFT seen as absent (its `sys.modules`
entry set to None, so `importlib.util.find_spec("peft")` answers None) and with the Kubeflow question answered
from the same two environment variables transformers reads. The checks are the same; only what they import changes. It
applies to a process that trains nothing (the workers import everything for themselves): `TrainingArguments`
built inside the block are for checking, and `transformers.trainer_utils` is left imported without its
PEFT names, which only its PEFT-model helpers use (they would fail loudly, not silently, in the driver).
`as_a_driver(check, ...)` is how the driver calls it: should a check meet an ImportError inside the block (a
transformers release that imports PEFT unconditionally), it runs again without it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

HIDDEN = "peft"


def kubeflow_available() -> bool:
    """transformers' answer: a Kubeflow TrainJob sets KUBEFLOW_TRAINER_SERVER_URL; DISABLE_KUBEFLOW_INTEGRATION=true
    turns the integration off."""
    if os.environ.get("DISABLE_KUBEFLOW_INTEGRATION", "FALSE").upper() == "TRUE":
        return False
    return os.environ.get("KUBEFLOW_TRAINER_SERVER_URL") is not None


def _forget_peft_answer() -> None:
    utils = sys.modules.get("transformers.utils.import_utils")
    clear = getattr(getattr(utils, "is_peft_available", None), "cache_clear", None)
    if clear is not None:
        clear()


@contextlib.contextmanager
def for_a_driver() -> Iterator[None]:
    """Config checks that import neither PEFT nor transformers' model code (see the module's doc).

    A no-op for what is already imported: a process that has PEFT or the integrations loaded keeps them.
    """
    hide = HIDDEN not in sys.modules
    if hide:
        sys.modules[HIDDEN] = None  # find_spec -> None: transformers sees PEFT as not installed
    integrations = None
    try:
        import transformers.integrations as integrations  # the lazy module: cheap

        if "is_kubeflow_available" in vars(integrations):  # already imported for real: keep it
            integrations = None
        else:
            integrations.is_kubeflow_available = kubeflow_available
    except ImportError:
        integrations = None
    try:
        yield
    finally:
        if hide and sys.modules.get(HIDDEN, 0) is None:
            del sys.modules[HIDDEN]
            _forget_peft_answer()  # transformers caches "not installed"; a later question gets the truth
        if integrations is not None and vars(integrations).get("is_kubeflow_available") is kubeflow_available:
            del integrations.is_kubeflow_available  # a later use imports the real one


def as_a_driver(check: Callable[..., T], *args, **kwargs) -> T:
    """`check(*args, **kwargs)` inside `for_a_driver()`; again without it should an import fail there (a
    transformers release that imports PEFT unconditionally): slower, never wrong."""
    try:
        with for_a_driver():
            return check(*args, **kwargs)
    except ImportError:
        return check(*args, **kwargs)
