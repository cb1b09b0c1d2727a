"""How prefsweep talks to an MLflow store: which errors are worth retrying, retrying them, failing fast.

The bottom of `rayjobs.tracking`: everything else in the package may import it; it imports none of them.
"""

from __future__ import annotations

import os
import time

from mlflow.exceptions import MlflowException

# MLflow answers these for requests that will never succeed as sent; anything else (connection refused,
# timeouts, 5xx, SQLite locked, auth) may pass later, so it is retried and, failing that, stays spooled.
PERMANENT_ERRORS = {
    "BAD_REQUEST",
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE",
}


def fail_fast_http(uri: str) -> None:
    """Make MLflow's HTTP client give up on a dead server at once (its defaults: 7 retries with backoff and
    a 120 s timeout, minutes per call): the sender retries on its own schedule. Process-wide (MLflow reads
    these per request), and only where the user has not set them."""
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def is_permanent(err: BaseException) -> bool:
    return isinstance(err, MlflowException) and err.error_code in PERMANENT_ERRORS


def with_retries(call, *args, tries: int = 4, **kwargs):
    """SQLite allows one writer; parallel trials may find it locked past MLflow's own busy timeout, which
    MLflow reports as TEMPORARILY_UNAVAILABLE. Other errors are not retried."""
    for attempt in range(tries):
        try:
            return call(*args, **kwargs)
        except MlflowException as err:
            if err.error_code != "TEMPORARILY_UNAVAILABLE" or attempt == tries - 1:
                raise
            time.sleep(0.5 * 2**attempt)


def short_error(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text if len(text) <= 300 else text[:300] + "..."
