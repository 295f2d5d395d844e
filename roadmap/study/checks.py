"""The checks of a study against its data, the machine and the cluster: one line, exit code 2, before anything trains
or is submitted (the options against each other are checked as they are read: LaunchSettings.check_options)."""
from __future__ import annotations

import os
from collections.abc import Sequence

import click

from ..data import validate_data
from ..errors import SpecError
from .executors.local import local_slots
from .executors.slurm import check_slurm
from .settings import Launcher, Study


def validate_study(study: Study) -> None:
    """The data source, checked as a run would read it (the specs were checked when the plan was made)."""
    trained = study.plan.trained()
    if trained:
        validate_data(trained[0].data, cache_dir=study.run.data_cache, download=study.run.download)


def check_launch(study: Study, visible_gpus: Sequence[int]) -> None:
    """The launcher against the machine and the cluster (its options were checked as they were read); the
    checkpoint folder."""
    launch = study.launch
    if launch.launcher != Launcher.INLINE and "WORLD_SIZE" in os.environ:
        raise SpecError(f"--launcher {launch.launcher} starts its own training processes; run it without torchrun")
    if launch.launcher == Launcher.LOCAL:
        local_slots(launch.max_parallel, gpus_per_job(study), visible_gpus)
    elif launch.launcher == Launcher.SLURM:
        check_slurm()
        _warn_about_the_store(study.tracking_uri, study.tracking_patience_s)
    _check_writable(study)


def gpus_per_job(study: Study) -> int:
    """GPUs each local job sees: --gpus-per-node on CUDA, none on the CPU."""
    return study.launch.gpus_per_node if study.run.device == "cuda" else 0


def _warn_about_the_store(tracking_uri: str | None, patience_s: float) -> None:
    from ..tracking import check_tracking_uri, is_shared_server

    uri = check_tracking_uri(tracking_uri, patience_s)
    if not is_shared_server(uri):
        click.echo(f"warning: tracking store {uri} is a local file; jobs on other nodes need a shared file system to "
                   "reach it and many writers can lock it: run `mlflow server` on a database and pass --tracking-uri "
                   "http://HOST:PORT (README, 'Run on a cluster')", err=True)


def _check_writable(study: Study) -> None:
    """The checkpoint folder can be made and written, checked on its deepest existing folder (nothing is left)."""
    existing = study.checkpoint_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    probe = existing / f".write-probe-{os.getpid()}"
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise SpecError(f"--checkpoint-dir {study.checkpoint_dir} cannot be written ({error.strerror or error}); the "
                        "jobs keep their checkpoints there: choose a folder every job can write") from None
