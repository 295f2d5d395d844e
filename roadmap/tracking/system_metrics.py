"""MLflow's system metrics of one step run: CPU, memory, disk, network, and each GPU through NVML where present.

MLflow's `SystemMetricsMonitor` collects them (psutil; `nvidia-ml-py` for NVIDIA GPUs) and logs them as
`system/cpu_utilization_percentage`, `system/system_memory_usage_megabytes`, `system/gpu_0_utilization_percentage`
... every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (default 10). Its own loop stops for good at the
first failed request and logs nothing for a run shorter than one interval, so the loop is ours: a sample
that cannot be sent is kept in the next one's average, and the run's end always logs a last sample.
"""
from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import click

from .errors import first_line

# What MLflow's monitor puts before every name it logs.
SYSTEM_PREFIX = "system/"
# "Started monitoring system metrics." and "Skip logging GPU metrics." at INFO, for every run, are noise here.
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)


class _Sampler:
    """A daemon thread publishing one aggregated sample of MLflow's monitors every sampling interval."""

    def __init__(self, monitor, run_id: str) -> None:
        self._monitor = monitor
        self._stop = threading.Event()
        self._failure: str | None = None
        self._thread = threading.Thread(target=self._loop, name=f"system-metrics-{run_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> str | None:
        """Stop, log a last sample; the last failure's reason if some samples were not logged."""
        self._stop.set()
        self._thread.join()
        self._publish()
        return self._failure

    def _loop(self) -> None:
        while not self._stop.wait(self._monitor.sampling_interval):
            self._publish()

    def _publish(self) -> None:
        monitor = self._monitor
        try:
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
            self._failure = None
        except Exception as error:  # a server outage, or a monitor that cannot read a counter
            # The samples stay in the monitors and enter the next average; the unsent batch is dropped.
            monitor.mlflow_logger.data.clear()
            self._failure = first_line(error, 160)


@contextmanager
def monitor_system(tracking_uri: str, run_id: str) -> Iterator[None]:
    """MLflow's system metrics logged into run `run_id` while the block runs (continuing a resumed run's steps)."""
    sampler = _start(tracking_uri, run_id)
    try:
        yield
    finally:
        failure = sampler.finish() if sampler else None
        if failure:
            click.echo(f"warning: the last system metrics of run {run_id} were not logged ({failure})", err=True)


def _start(tracking_uri: str, run_id: str) -> _Sampler | None:
    if importlib.util.find_spec("psutil") is None:
        _warn_once("psutil is not installed (pip install psutil)")
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    try:
        monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=tracking_uri)
    except Exception as error:  # the store did not answer when the monitor asked for the run's last step
        click.echo(f"warning: no system metrics for run {run_id} ({first_line(error, 160)})", err=True)
        return None
    sampler = _Sampler(monitor, run_id)
    sampler.start()
    return sampler


_warned: set[str] = set()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        click.echo(f"warning: MLflow's system metrics are off: {reason}", err=True)
