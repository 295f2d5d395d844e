"""Tracking stores: checking a URI, opening a client, creating a new store and an experiment safely."""
from __future__ import annotations

import contextlib
import fcntl
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.file_utils import path_to_local_file_uri

from .errors import VALID_URI_FORMS, TrackingError, TrackingUnreachable, first_line
from .server import DEFAULT_PATIENCE_S, PatientClient, probe_server, use_mlflow_retry_defaults

# MLflow 3.x's own default: with MLFLOW_TRACKING_URI unset (and no legacy ./mlruns file store present),
# `mlflow.get_tracking_uri()` is "sqlite:///mlflow.db" in the working directory, and a plain `mlflow ui`
# started there serves it. Artifacts go beside the database, in ./mlruns/<experiment>.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def check_tracking_uri(tracking_uri: str | None, patience_s: float = DEFAULT_PATIENCE_S) -> str:
    """The URI to use (the default for None); a malformed one, or a server that is not one, raises TrackingError.

    A server that does not answer is waited for up to `patience_s` (then TrackingUnreachable).
    """
    uri = DEFAULT_TRACKING_URI if tracking_uri is None else tracking_uri.strip()
    scheme = urlparse(uri).scheme
    if not uri:
        raise TrackingError(f"tracking URI is empty; valid forms: {VALID_URI_FORMS}")
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///") or not uri[len("sqlite:///"):].strip("/"):
            raise TrackingError(f"tracking URI {uri!r} is malformed; valid forms: {VALID_URI_FORMS}")
        if Path(sqlite_path(uri)).is_dir():
            raise TrackingError(f"tracking URI {uri!r} names a directory, not a database file; "
                                f"valid forms: {VALID_URI_FORMS}")
    elif scheme in ("http", "https"):
        probe_server(uri, patience_s)
    elif scheme == "file":
        if not uri.startswith("file:///") and not uri.startswith("file://localhost/"):
            raise TrackingError(f"tracking URI {uri!r} is malformed; valid forms: {VALID_URI_FORMS}")
    elif scheme and len(scheme) > 1:  # one letter: a Windows drive, i.e. a plain path
        raise TrackingError(f"tracking URI {uri!r} has an unknown scheme {scheme!r}; valid forms: {VALID_URI_FORMS}")
    return uri


def absolute_uri(tracking_uri: str | None, patience_s: float = DEFAULT_PATIENCE_S) -> str:
    """The URI with a local store's path made absolute, for jobs that run in another working directory."""
    uri = check_tracking_uri(tracking_uri, patience_s)
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        return f"sqlite:///{Path(sqlite_path(uri)).resolve()}"
    if not scheme or len(scheme) == 1:  # a plain directory: MLflow's file store
        return str(Path(uri).resolve())
    return uri


def sqlite_path(uri: str) -> str:
    # sqlite:///rel/path is relative to the working directory; sqlite:////abs/path is absolute.
    return uri[len("sqlite:///"):]


def open_client(uri: str, patience_s: float = DEFAULT_PATIENCE_S) -> MlflowClient:
    """A client of a checked URI whose store exists: a new SQLite file is created (MLflow's schema migration)
    under an interprocess lock, so that studies started at the same moment on a new file all succeed.

    The client of a tracking server waits out an outage in every call, up to `patience_s` (PatientClient,
    which forwards every MlflowClient method).
    """
    try:
        with store_lock(uri):
            client = MlflowClient(tracking_uri=uri)
            if is_shared_server(uri):
                use_mlflow_retry_defaults()
                client = cast(MlflowClient, PatientClient(client, uri, patience_s))
            client.search_experiments(max_results=1)  # creates and migrates the store now, inside the lock
        return client
    except (TrackingError, TrackingUnreachable):
        raise
    except Exception as error:  # MLflow, SQLAlchemy and sqlite3 each raise their own kinds here
        raise store_error(uri, error, "cannot be opened") from None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on `<database>.lock` beside a SQLite store (nothing for other stores).

    Two processes creating the same new database both run MLflow's migrations and leave it unreadable;
    under the lock the second finds it made. The kernel drops the lock when its holder dies.
    """
    if urlparse(uri).scheme != "sqlite":
        yield
        return
    database = Path(sqlite_path(uri))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def store_error(uri: str, error: Exception, what: str) -> TrackingError:
    if "MLFLOW_ALLOW_FILE_STORE" in str(error):
        return TrackingError(f"tracking URI {uri!r} is MLflow's file store, which mlflow 3 refuses unless "
                             f"MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///PATH (default sqlite:///mlflow.db)")
    return TrackingError(f"tracking URI {uri!r} {what} ({first_line(error)}); valid forms: {VALID_URI_FORMS}")


def store_is_absent(uri: str) -> bool:
    """True when a local store does not exist yet (so reading it must not create it)."""
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        return not Path(sqlite_path(uri)).exists()
    if scheme == "file":
        return not Path(urlparse(uri).path).exists()
    if scheme in ("http", "https"):
        return False
    return not Path(uri).exists()


def is_shared_server(uri: str) -> bool:
    """Whether many machines can write to the store at once (a tracking server), unlike a SQLite or file store."""
    return urlparse(uri).scheme in ("http", "https")


def artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a sqlite store sit beside the database, wherever the working directory is."""
    if urlparse(uri).scheme != "sqlite":
        return None  # a server or file store decides for itself
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)
    return path_to_local_file_uri(str(Path(sqlite_path(uri)).resolve().parent / "mlruns" / folder))


def get_experiment(client: MlflowClient, uri: str, experiment: str):
    try:
        return client.get_experiment_by_name(experiment)
    except TrackingUnreachable:
        raise
    except Exception as error:  # as in open_client
        raise store_error(uri, error, "cannot be read") from None


def active_experiment_id(uri: str, experiment: str, patience_s: float = DEFAULT_PATIENCE_S) -> str | None:
    """The id of `experiment` if it exists and is not deleted; never creates the store."""
    if store_is_absent(uri):
        return None
    found = get_experiment(open_client(uri, patience_s), uri, experiment)
    return found.experiment_id if found is not None and found.lifecycle_stage == "active" else None


def experiment_exists(tracking_uri: str | None, experiment: str, patience_s: float = DEFAULT_PATIENCE_S) -> bool:
    """Whether `experiment` exists (and is not deleted) in the store; never creates the store."""
    return active_experiment_id(check_tracking_uri(tracking_uri, patience_s), experiment, patience_s) is not None


def ensure_experiment(client: MlflowClient, uri: str, experiment: str, tags: dict[str, str]) -> str:
    """The id of `experiment`, created with `tags` if it does not exist (safely against a simultaneous creator).

    The tags are set on an existing experiment too, so that a study's description stays current.
    """
    if not experiment or not experiment.strip():
        raise TrackingError("experiment name is empty; give a name such as 'convnext_roadmap'")
    with store_lock(uri):
        found = get_experiment(client, uri, experiment)
        if found is not None and found.lifecycle_stage != "active":
            raise TrackingError(f"experiment {experiment!r} is deleted in {uri!r}; restore it "
                                f"(`mlflow experiments restore`) or choose another name")
        if found is None:
            try:
                experiment_id = client.create_experiment(experiment, artifact_location=artifact_location(uri,
                                                                                                       experiment))
            except MlflowException as error:
                found = get_experiment(client, uri, experiment)  # created by another process in the meantime
                if found is None:
                    raise TrackingError(f"experiment {experiment!r} cannot be created in {uri!r} "
                                        f"({first_line(error)})") from None
                experiment_id = found.experiment_id
        else:
            experiment_id = found.experiment_id
        for key, value in tags.items():
            retry_insert_race(lambda key=key, value=value: client.set_experiment_tag(experiment_id, str(key), value))
    return experiment_id


def retry_insert_race(write: Callable[[], Any], attempts: int = 5) -> None:
    """`write()`, again after a unique-key error. MLflow 3.17 checks that a row (an experiment tag, a dataset)
    is absent and then inserts it: two processes at once (or a server's workers, outside our lock) make the
    second insert fail; on the retry the row exists and MLflow updates or reuses it."""
    for attempt in range(attempts):
        try:
            write()
            return
        except MlflowException as error:
            if ("UNIQUE constraint" not in str(error) and "IntegrityError" not in str(error)) \
                    or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
