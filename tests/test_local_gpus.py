"""The local launcher on a multi-GPU box, simulated: slots x GPUs checked against what is visible, distinct GPUs per
job, re-attached jobs keep theirs; and the claim is taken before MLflow is asked, so no run is opened twice."""
from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from roadmap.errors import SpecError
from roadmap.schema import ACTIVE, Status
from roadmap.study.executors.base import JobHandle
from roadmap.study.executors.local import LocalExecutor, LocalResources, _alive, local_slots


@pytest.mark.parametrize(("visible", "per_job", "max_parallel", "slots"), [
    (1, 1, None, 1), (3, 1, None, 3), (3, 2, None, 1), (8, 2, None, 4), (8, 1, 3, 3), (0, 0, None, 1), (0, 0, 4, 4),
])
def test_slots_follow_the_visible_gpus(visible, per_job, max_parallel, slots):
    assert local_slots(max_parallel, per_job, tuple(range(visible))) == slots


@pytest.mark.parametrize(("visible", "per_job", "max_parallel", "message"), [
    (3, 2, 2, "--max-parallel=2 x --gpus-per-node=2 needs 4 GPUs, 3 are visible; use --max-parallel 1 or fewer"),
    (1, 2, None, "--gpus-per-node=2 is not valid here: 1 GPU(s) visible"),
    (8, 1, 9, "--max-parallel=9 x --gpus-per-node=1 needs 9 GPUs, 8 are visible; use --max-parallel 8 or fewer"),
])
def test_more_slots_than_gpus_are_refused_in_one_line(visible, per_job, max_parallel, message):
    with pytest.raises(SpecError) as error:
        local_slots(max_parallel, per_job, tuple(range(visible)))
    assert str(error.value) == message


def _run_all(executor: LocalExecutor, keys: list[str]) -> list[frozenset[int]]:
    """Poll until every job ended; the GPU sets of the jobs running together at each poll."""
    overlaps = []
    while True:
        statuses = executor.statuses()
        running = [executor.handles()[key].gpus for key, status in statuses.items()
                   if status.state == Status.RUNNING and key in executor.handles()]
        overlaps.append(sum(len(gpus) for gpus in running) - len(set().union(*map(set, running))) if running else 0)
        assert len(running) <= executor.resources.slots
        if all(statuses.get(key) and statuses[key].state not in ACTIVE for key in keys):
            return overlaps
        time.sleep(0.2)


@pytest.mark.parametrize(("visible", "per_job"), [(1, 1), (3, 1), (8, 2)])
def test_each_job_sees_its_own_gpus(tmp_path, visible, per_job):
    slots = local_slots(None, per_job, tuple(range(visible)))
    resources = LocalResources(tasks_per_node=1, timeout_min=5, slots=slots, gpus_per_job=per_job,
                               visible_gpus=tuple(range(visible)))
    executor = LocalExecutor(os.getenv, tmp_path, resources)
    keys = [f"unit{i}" for i in range(slots + 2)]
    executor.submit([(key, "CUDA_VISIBLE_DEVICES") for key in keys])
    assert max(_run_all(executor, keys)) == 0  # no GPU shared by two jobs running at once
    for key in keys:
        handle = executor.handles()[key]
        assert len(handle.gpus) == per_job and set(handle.gpus) <= set(range(visible))
        assert executor.result(key).value == ",".join(map(str, handle.gpus))  # what the job itself saw


def test_a_reattached_job_keeps_its_slot_and_its_gpus(tmp_path):
    resources = LocalResources(tasks_per_node=1, timeout_min=5, slots=2, gpus_per_job=1, visible_gpus=(0, 1, 2))
    first = LocalExecutor(time.sleep, tmp_path, resources)
    first.submit([("long", 6)])
    handle = first.handles()["long"]
    deadline = time.monotonic() + 30
    while not _alive(int(handle.job_id)) and time.monotonic() < deadline:  # until the controller has started
        time.sleep(0.1)
    # A later launcher (the first one is gone) re-attaches to the job that still runs.
    later = LocalExecutor(os.getenv, tmp_path, resources)
    assert later.attach("long", JobHandle(handle.job_id, handle.gpus))
    later.submit([(f"new{i}", "CUDA_VISIBLE_DEVICES") for i in range(2)])
    started = later.handles()
    assert set(started) == {"long", "new0"}  # one slot left beside the re-attached job
    assert not set(started["new0"].gpus) & set(handle.gpus)
    _run_all(later, ["long", "new0", "new1"])
    assert later.result("long").value is None and {later.result(f"new{i}").value for i in range(2)} <= {"0", "1", "2"}


def _train(unit, wait_for: str | None, outcomes) -> None:
    """Run one unit; with `wait_for`, its claim is asked for only once that file exists."""
    from roadmap.study import claim
    from roadmap.study import unit as unit_module

    if wait_for is not None:
        acquire = claim.Claim.acquire

        def late_acquire(self):
            while not os.path.exists(wait_for):
                time.sleep(0.05)
            return acquire(self)

        claim.Claim.acquire = late_acquire
    outcome = unit_module.run_unit(unit)
    outcomes.put(str(outcome.status))


def test_a_unit_finished_while_another_process_waited_for_its_claim_is_not_opened_twice(tmp_path):
    """Process B reaches the unit while A trains it and gets the claim only after A has finished. Asking MLflow
    before the claim (as before) saw nothing finished and trained it again into a second run; now B skips it."""
    from mlflow import MlflowClient

    from roadmap import load_roadmap
    from roadmap.cli.ablation import build_study, main
    from roadmap.study.unit import plan_units

    args = ["--upto", "resnet50", "--preset", "smoke", "--no-progress", "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db", "--checkpoint-dir", str(tmp_path / "checkpoints")]
    study = build_study(load_roadmap("resnet50_to_convnext_t"), main.make_context("x", args).params)
    from roadmap.tracking import Tracker

    Tracker(study.tracking_uri, study.experiment, system_metrics=False)  # the store exists before both start
    (unit,) = plan_units(study, None)
    context = multiprocessing.get_context("fork")
    outcomes, done = context.Queue(), tmp_path / "a-finished"
    late = context.Process(target=_train, args=(unit, str(done), outcomes))
    late.start()
    _train(unit, None, outcomes)
    done.touch()
    late.join(300)
    assert sorted(outcomes.get(timeout=10) for _ in range(2)) == ["finished", "skipped"]
    client = MlflowClient(tracking_uri=study.tracking_uri)
    experiment = client.get_experiment_by_name(study.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.run_kind = 'step'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
