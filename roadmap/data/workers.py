"""How many data-loader workers a training process gets: the cores it may use, shared with its siblings."""
from __future__ import annotations

import os
from collections.abc import Mapping


def usable_cores(environ: Mapping[str, str] | None = None, affinity: set[int] | None = None) -> int:
    """Cores this process may run on: its CPU affinity, capped by SLURM_CPUS_PER_TASK when SLURM set it.

    The affinity is what the kernel enforces (SLURM's task/affinity or cgroup plugins, `taskset`, a
    container's cpuset); SLURM_CPUS_PER_TASK also counts where the cluster allocates cores but does not
    bind them, so that a task never takes more than it was given.
    """
    environ = os.environ if environ is None else environ
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = max(1, len(affinity))
    allocated = environ.get("SLURM_CPUS_PER_TASK", "")
    return min(cores, int(allocated)) if allocated.isdigit() and int(allocated) > 0 else cores


def processes_sharing_cores(environ: Mapping[str, str] | None = None) -> int:
    """Training processes that share this process's cores: torchrun's processes on this node, else 1.

    torchrun's processes inherit their launcher's cores, unbound, so its LOCAL_WORLD_SIZE processes
    share them. A SLURM task (one per GPU, as this harness's jobs run) has cores of its own, even when
    submitit exports LOCAL_WORLD_SIZE for it: only torchrun sets TORCHELASTIC_RUN_ID.
    """
    environ = os.environ if environ is None else environ
    local = environ.get("LOCAL_WORLD_SIZE", "")
    if "TORCHELASTIC_RUN_ID" in environ and local.isdigit() and int(local) > 0:
        return int(local)
    return 1


def default_workers(environ: Mapping[str, str] | None = None, affinity: set[int] | None = None) -> int:
    """Data-loader workers for this training process: its share of the usable cores, less one core that the
    process itself needs (the training loop, the device copies). 0 on one core: load in the process itself.

    E.g. 8 GPUs on a 112-core node: 13 workers per GPU, whether SLURM runs one task per GPU with
    --cpus-per-task=14 or torchrun starts 8 processes on the node's 112 cores.
    """
    share = usable_cores(environ, affinity) // processes_sharing_cores(environ)
    return max(0, share - 1)
