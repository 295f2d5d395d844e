"""A smoke study killed with SIGKILL in mid-training, then run again: it must resume and finish every epoch.

Runs `run_ablation.py` as a user would, in a fresh folder; prints one line of figures (the last line starts
with `kill-and-resume:`) and exits 1 when the second run did not resume or did not finish.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

REPO = Path(__file__).resolve().parent.parent


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--epochs", type=click.IntRange(min=2), default=6, show_default=True,
              help="Epochs of the one step trained; the kill lands after the first checkpoint.")
@click.option("--upto", default="resnet50", show_default=True, help="Last step of the smoke study.")
@click.option("--timeout", "timeout_s", type=click.IntRange(min=10), default=300, show_default=True,
              help="Seconds each run may take.")
def main(device: str, epochs: int, upto: str, timeout_s: int) -> None:
    """Train the smoke preset's `--upto` step, kill it after its first epoch checkpoint, run the same command
    again and check that it resumed from that checkpoint and finished all epochs."""
    args = [sys.executable, str(REPO / "run_ablation.py"), "--upto", upto, "--preset", "smoke", "--epochs",
            str(epochs), "--device", device, "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="kill_and_resume.") as folder:
        workdir = Path(folder)
        start = time.perf_counter()
        process = subprocess.Popen(args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        while not list(workdir.glob("checkpoints/**/last.pt")):
            if process.poll() is not None or time.perf_counter() - start > timeout_s:
                process.kill()
                fail(f"the first run ended (exit {process.returncode}) before its first checkpoint")
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        killed_after = time.perf_counter() - start
        if list(workdir.glob("checkpoints/**/final.json")):
            fail("killed too late: the step had already finished; give more --epochs")
        start = time.perf_counter()
        rerun = subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=timeout_s, env=env)
        rerun_s = time.perf_counter() - start
        if rerun.returncode != 0:
            fail(f"the rerun exited {rerun.returncode}: {rerun.stderr.strip().splitlines()[-1:]}")
        results = [json.loads(path.read_text()) for path in workdir.glob("checkpoints/**/final.json")]
        resumed = [result for result in results if result["resumed_from_epoch"] > 0]
        if not resumed:
            fail("no run resumed: every final.json says resumed_from_epoch 0")
        result = resumed[0]
        if len(result["history"]) != epochs:
            fail(f"the resumed run holds {len(result['history'])} epochs, not {epochs}")
    click.echo(f"kill-and-resume: {device}, smoke preset, --upto {upto}, {epochs} epochs: killed (SIGKILL) "
               f"{killed_after:.1f} s after start, after epoch {result['resumed_from_epoch']}; the rerun resumed "
               f"from epoch {result['resumed_from_epoch']} and finished {len(result['history'])} epochs in "
               f"{rerun_s:.1f} s (process start included), top-1 {result['top1']:.2f} %, train loss "
               f"{result['train_loss']:.4f}")


def fail(reason: str) -> None:
    click.echo(f"kill-and-resume: FAILED: {reason}")
    sys.exit(1)


if __name__ == "__main__":
    main()
