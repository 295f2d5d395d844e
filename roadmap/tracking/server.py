"""A tracking server: a URI that is wrong (one line, exit 2) told apart from a server that is briefly down (waited for).

Wrong: a host that does not resolve, a TLS failure, an answer that is not MLflow's, credentials refused
(401/403). Down: connection refused, reset or timed out, or 408/429/5xx answers (an `mlflow server` whose
database is down answers 500). A server that is down is waited for with exponential backoff, bounded by a
patience (`patience_s`), announced in one line; past it, `TrackingUnreachable`, which is not a bad input.

Two layers of retries: MLflow's own per request (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, `..._BACKOFF_FACTOR`; each
attempt bounded by `MLFLOW_HTTP_REQUEST_TIMEOUT`), shortened here to absorb blips of a few seconds, and ours
around each call, up to the patience. A call retried after its request reached the server may apply twice
(MLflow's own retries take that risk too); a server stopped with SIGTERM finishes the requests it has.
"""
from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

import click
import requests
import urllib3.exceptions
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from .errors import VALID_URI_FORMS, TrackingError, TrackingUnreachable, first_line

T = TypeVar("T")

# How long a job or a study waits for a tracking server that does not answer (a restart, a maintenance).
DEFAULT_PATIENCE_S = 600.0
# Our backoff between two attempts: 1, 2, 4 ... s, at most 30 s.
FIRST_DELAY_S, MAX_DELAY_S = 1.0, 30.0
# Seconds one reachability probe may take.
PROBE_TIMEOUT_S = 5.0
# MLflow's defaults retry one request 7 times over ~4 min in silence, so an outage would be announced minutes
# late and the patience overrun by minutes. With these, MLflow's own retries absorb ~7 s (backoff 0, 2, 4 s)
# and ours take over. Variables the user sets win.
MLFLOW_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# A cheap authenticated request every MLflow tracking server answers (/health needs no credentials).
PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/search"
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class _Down(Exception):
    """One failed attempt at a server that may come back; the message says why."""


def use_mlflow_retry_defaults() -> None:
    for name, value in MLFLOW_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def outage_reason(error: BaseException) -> str | None:
    """Why `error` is a server that is down for now (connection refused, timeout, 5xx), else None."""
    chain = _chain(error)
    if any(isinstance(c, (urllib3.exceptions.NameResolutionError, requests.exceptions.SSLError)) for c in chain):
        return None  # a host that does not exist, or a certificate: the URI (or the set-up) is wrong
    if isinstance(error, _Down):
        return str(error)
    # The most precise reason first: the socket's, then urllib3's, then requests'.
    for c in chain:
        if isinstance(c, (ConnectionRefusedError, ConnectionResetError)):
            return c.strerror or type(c).__name__
    for c in chain:
        if isinstance(c, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
            return "timed out"
        if isinstance(c, urllib3.exceptions.ResponseError):  # MLflow's retries on 5xx ran out
            return str(c)
    for c in chain:
        if isinstance(c, requests.exceptions.ConnectionError):
            return first_line(c, 120)
    return None


def patiently(uri: str, call: Callable[[], T], patience_s: float, *, now: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> T:
    """`call()`; while the server at `uri` is down, again with exponential backoff for up to `patience_s`.

    One line when the wait starts and one when the server answers again; TrackingUnreachable past the patience.
    Any other error propagates at once.
    """
    started, delay = None, FIRST_DELAY_S
    while True:
        try:
            result = call()
        except Exception as error:  # MLflow, requests and urllib3 each raise their own kinds
            reason = outage_reason(error)
            if reason is None:
                raise
            if started is None:
                started = now()
                click.echo(f"tracking server {uri} unreachable ({reason}); retrying for up to "
                           f"{_duration(patience_s)}", err=True)
            waited = now() - started
            if waited >= patience_s:
                raise TrackingUnreachable(
                    f"tracking server {uri} still unreachable after {_duration(waited)} of retries ({reason}); "
                    "start it (or check its database), then run the same command again") from None
            sleep(min(delay, patience_s - waited))
            delay = min(2 * delay, MAX_DELAY_S)
        else:
            if started is not None:
                click.echo(f"tracking server {uri} answers again after {_duration(now() - started)}", err=True)
            return result


def probe_server(uri: str, patience_s: float = DEFAULT_PATIENCE_S) -> None:
    """Raise TrackingError (exit 2) when `uri` is not a usable MLflow server; wait while it is down."""
    use_mlflow_retry_defaults()
    patiently(uri, lambda: _probe_once(uri), patience_s)


def _probe_once(uri: str) -> None:
    creds = get_default_host_creds(uri)
    try:
        response = http_request(creds, PROBE_ENDPOINT, "GET", max_retries=0, backoff_factor=0,
                                retry_codes=frozenset(), timeout=PROBE_TIMEOUT_S, params={"max_results": 1})
    except MlflowException as error:
        reason = outage_reason(error)
        if reason is not None:
            raise _Down(reason) from None
        if _in_chain(error, urllib3.exceptions.NameResolutionError):
            raise TrackingError(f"tracking URI {uri!r} names a host that does not resolve "
                                f"({urlparse(uri).hostname!r}); check the host name; valid forms: {VALID_URI_FORMS}") \
                from None
        raise TrackingError(f"tracking server {uri!r} cannot be reached ({_cause_line(error)}); check the URI and "
                            f"its certificates; valid forms: {VALID_URI_FORMS}") from None
    status = response.status_code
    if status in TRANSIENT_STATUS:
        raise _Down(f"HTTP {status} {response.reason}")
    if status == 401:
        who = (f"refused the user name and password of {creds.username!r}" if creds.username
               else "needs a user name and password")
        raise TrackingError(f"tracking server {uri} {who} (HTTP 401); set MLFLOW_TRACKING_USERNAME and "
                            "MLFLOW_TRACKING_PASSWORD to an account of that server")
    if status == 403:
        raise TrackingError(f"tracking server {uri} does not let user {creds.username!r} read experiments "
                            "(HTTP 403); ask its admin for READ permission or more")
    if status != 200 or not _is_json_object(response.text):
        raise TrackingError(f"{uri!r} answers, but not as an MLflow tracking server (HTTP {status} for "
                            f"{PROBE_ENDPOINT}); give the address of an `mlflow server`; valid forms: "
                            f"{VALID_URI_FORMS}")


class PatientClient:
    """An MlflowClient of a tracking server whose every call waits out an outage (`patiently`)."""

    def __init__(self, client: MlflowClient, uri: str, patience_s: float) -> None:
        self._client, self._uri, self._patience_s = client, uri, patience_s

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def patient_call(*args: Any, **kwargs: Any) -> Any:
            return patiently(self._uri, lambda: attribute(*args, **kwargs), self._patience_s)

        return patient_call


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and its causes, outermost first (MLflow wraps requests' errors, which wrap urllib3's)."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def _in_chain(error: BaseException, kind: type[BaseException]) -> bool:
    return any(isinstance(cause, kind) for cause in _chain(error))


def _cause_line(error: BaseException) -> str:
    """The innermost reason, not MLflow's wrapper sentence."""
    return first_line(_chain(error)[-1], 200)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"
