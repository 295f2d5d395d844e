"""run_ablation.py without training: the plan table, JSON, roadmaps, and one-line errors with exit code 2."""
from __future__ import annotations

import json

import pytest
from helpers import PUBLISHED_PARAMS

from roadmap import load_roadmap


def test_dry_run_json_lists_every_step_up_to_the_target(cli):
    from roadmap.study.plan_table import VARIANT_KEYS

    result = cli("--upto", "kernel_9", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    rows = plan["variants"]
    roadmap = load_roadmap("resnet50_to_convnext_t")
    assert (plan["ablation"], plan["upto"], plan["preset"], plan["seeds"], plan["units"]) == (
        "cumulative", "kernel_9", "demo", [0], len(rows))
    assert [row["variant"] for row in rows] == roadmap.names()[: roadmap.names().index("kernel_9") + 1]
    assert tuple(rows[0]) == VARIANT_KEYS
    assert (rows[0]["recipe"], rows[0]["batch_size"], rows[0]["bn_batch"], rows[0]["processes"]) == ("classic", 64,
                                                                                                       64, 1)
    assert rows[0]["paper_scale_params"] == PUBLISHED_PARAMS["resnet50"]
    assert rows[0]["paper_scale_gmacs"] == pytest.approx(4.09, abs=0.01)
    assert rows[0]["gmacs"] < 0.01 and rows[0]["image_size"] == 32  # what trains here: 32 px, 1/4 width
    assert [row["adopted"] for row in rows if row["variant"].startswith("kernel_")] == [False, True, False]
    for row, step in zip(rows, roadmap.steps):
        assert (row["group"], row["paper_top1"], row["paper_gflops"], row["baseline"]) == (
            step.group, step.paper["top1"], step.paper["gflops"], step.parent)
        assert row["trains"] and len(row["config_hash"]) == 16


def test_list_steps_prints_a_table_with_units_and_the_disagreeing_rows(cli):
    result = cli("--list-steps")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "multiply-accumulates" in out and "params (M)" in out and "paper GFLOPs" in out
    lines = out.splitlines()
    assert sum(1 for line in lines if line[:2].strip().isdigit()) == 17
    assert any(line.startswith("* bn_to_ln:") for line in lines)


def test_second_roadmap_plan_computes_every_step(cli):
    result = cli("--roadmap", "resnet200_to_convnext_b", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["variants"]
    assert rows[0]["variant"] == "resnet200" and rows[-1]["variant"] == "separate_downsampling"
    assert all(row["paper_scale_gmacs"] > 1 for row in rows)
    assert rows[-1]["paper_scale_params"] == PUBLISHED_PARAMS["convnext_base"]
    assert cli("--list-roadmaps").stdout.count("steps") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upto", "kernel_13", "--dry-run"], "unknown step 'kernel_13' in roadmap 'resnet50_to_convnext_t'; did you "
                                                "mean 'kernel_11'? valid"),
        (["--upto", "bn_to_lnn", "--dry-run"], "did you mean 'bn_to_ln'? valid steps: resnet50,"),
        (["--roadmap", "vgg_to_vit", "--dry-run"], "unknown roadmap 'vgg_to_vit'; valid roadmaps"),
        (["--seeds", "0,x", "--dry-run"], "--seeds='0,x' is not valid"),
        (["--device", "tpu"], "'tpu' is not one of 'auto', 'cpu', 'cuda'"),
        (["--preset", "huge", "--upto", "resnet50"], "preset='huge' is not valid; choose one of: smoke, demo"),
        (["--epochs", "-1", "--upto", "resnet50"], "epochs=-1 is not valid"),
        (["--data", "imagefolder:/no/such/dir", "--upto", "resnet50"], "/no/such/dir"),
        (["--data", "mnist", "--upto", "resnet50"], "valid; choose one of: synthetic, imagefolder, cifar10, cifar100"),
        (["--image-size", "16", "--upto", "resnet50"], "image_size=16 is not valid; a whole number >= 32"),
        (["--image-size", "16", "--list-steps"], "image_size=16 is not valid; a whole number >= 32"),
        (["--image-size", "0", "--list-steps"], "image_size=0 is not valid; a whole number >= 32"),
        (["--width-mult", "0", "--list-steps"], "width_multiplier=0.0 is not valid; a number > 0"),
        # A dry run checks every option as the run itself would.
        (["--epochs", "-1", "--dry-run"], "epochs=-1 is not valid"),
        (["--workers", "-1", "--dry-run"], "--workers=-1 is not valid; a whole number >= 0"),
        (["--micro-batch", "7", "--dry-run"], "the micro-batch 7 (images per forward pass and per BatchNorm statistic; "
                                              "--micro-batch) does not divide a process's share of the batch, 64"),
        (["--data", "imagefolder:/no/such/dir", "--dry-run"], "/no/such/dir"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message, cli):
    result = cli(*args, "--tracking-uri", f"sqlite:///{tmp_path}/m.db", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_malformed_step_file_exits_2_naming_file_and_key(tmp_path, cli):
    import shutil

    from roadmap.steps import DEFAULT_STEPS_DIR

    shutil.copytree(DEFAULT_STEPS_DIR / "resnet50_to_convnext_t", tmp_path / "mine")
    bad = tmp_path / "mine" / "12_gelu.toml"
    bad.write_text(bad.read_text().replace('activation = "gelu"', 'activation = "swish"'))
    result = cli("--steps-dir", str(tmp_path), "--roadmap", "mine", "--dry-run")
    assert result.returncode == 2
    assert "12_gelu.toml" in result.stderr
    assert "activation='swish' is not valid; choose one of: relu, gelu" in result.stderr
