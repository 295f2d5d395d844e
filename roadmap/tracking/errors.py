"""The tracking layer's errors: a store or server that cannot be used (a bad input), and an outage (not one)."""
from __future__ import annotations

from mlflow.exceptions import MlflowException

from ..errors import ServiceUnavailable, SpecError

VALID_URI_FORMS = (
    "sqlite:///PATH (e.g. sqlite:///mlflow.db), http(s)://HOST:PORT of an `mlflow server`, "
    "or a directory / file:///DIR (MLflow's file store; needs MLFLOW_ALLOW_FILE_STORE=true)"
)


class TrackingError(SpecError):
    """A tracking URI, server or experiment that cannot be used; the message names it and the valid forms."""


class TrackingUnreachable(ServiceUnavailable):
    """A tracking server that stayed unreachable for the whole patience: an outage, not a bad input."""


def first_line(error: BaseException, limit: int = 300) -> str:
    text = str(getattr(error, "message", error)).strip()
    line = text.splitlines()[0][:limit] if text else ""
    return line if isinstance(error, MlflowException) else f"{type(error).__name__}: {line}".rstrip(": ")
