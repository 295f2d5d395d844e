"""Bad step files are refused before anything trains: one line, exit 2, the file, the key, the value, what is valid.

The catalogue edits one step file (or roadmap.toml) of a copy of the shipped roadmap and runs the real command,
`run_ablation.py --steps-dir DIR`, as a plan (--dry-run) and as a study (--preset smoke): both must stop at
the file, and the study must leave no checkpoint, no results and no MLflow store behind.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import typing
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from roadmap import ArchSpec, RecipeSpec, SpecError, load_roadmap
from roadmap.recipes import CLASSIC, MODERN
from roadmap.spec import INTERPOLATIONS, RECIPE_RANGES
from roadmap.steps import DEFAULT_STEPS_DIR, RoadmapError

STEP_FILE = "01_modern_recipe.toml"


def set_top(key: str, value: str) -> Callable[[str], str]:
    """Set a top-level key of a step file (replace its line, or add it above the first table)."""
    def edit(text: str) -> str:
        line = re.compile(rf"^{key}\s*=.*$", re.MULTILINE)
        if line.search(text):
            return line.sub(f"{key} = {value}", text)
        return text.replace("[arch]", f"{key} = {value}\n[arch]", 1)
    return edit


def set_arch(key: str, value: str) -> Callable[[str], str]:
    """Set a flag in the step file's [arch] table, its last table."""
    def edit(text: str) -> str:
        line = re.compile(rf"^{key}\s*=.*$", re.MULTILINE)
        return line.sub(f"{key} = {value}", text) if line.search(text) else f"{text}{key} = {value}\n"
    return edit


def set_recipe(key: str, value: str) -> Callable[[str], str]:
    return lambda text: f"{text}\n[recipe_overrides]\n{key} = {value}\n"


def set_paper(key: str, value: str) -> Callable[[str], str]:
    """Set one number of the step's paper table (the others stay)."""
    numbers = {"top1": "78.82", "gflops": "4.09", key: value}
    table = ", ".join(f"{name} = {number}" for name, number in numbers.items())
    return lambda text: re.sub(r"^paper\s*=.*$", f"paper = {{ {table} }}", text, flags=re.MULTILINE)


# (what is edited, the edit, what the one line must say besides the file: the key, the value, what is valid)
CATALOGUE = [
    ("paper top1 as text", set_paper("top1", '"high"'), ["paper.top1='high'", "a number in [0, 100]"]),
    ("paper GMACs negative", set_paper("gflops", "-4.1"), ["paper.gflops=-4.1", "a number > 0"]),
    ("paper unknown key", set_paper("top5", "94.1"), ["unknown key 'paper.top5'", "valid keys: fig2_gflops"]),
    ("group a number", set_top("group", "3"), ["'group'=3", "a non-empty string"]),
    ("group empty", set_top("group", '""'), ["'group'=''", "a non-empty string"]),
    ("adopted as text", set_top("adopted", '"yes"'), ["'adopted'", "'yes'", "true or false"]),
    ("parent a number", set_top("parent", "5"), ["'parent'", "5", "an earlier step (resnet50)"]),
    ("parent a later step", set_top("parent", '"gelu"'), ["'parent'", "'gelu'", "an earlier step (resnet50)"]),
    ("name with a space", set_top("name", '"modern recipe"'), ["'name'='modern recipe'", "letters, digits and _"]),
    ("description a number", set_top("description", "7"), ["'description'=7", "a string"]),
    ("unknown recipe", set_top("recipe", '"fancy"'), ["recipe='fancy'", "choose one of: classic, modern"]),
    ("label smoothing 1.5", set_recipe("label_smoothing", "1.5"),
     ["[recipe_overrides] label_smoothing=1.5", "a number in [0, 1)"]),
    ("label smoothing nan", set_recipe("label_smoothing", "nan"), ["label_smoothing=nan", "a finite number"]),
    ("random erasing negative", set_recipe("random_erasing", "-0.25"), ["random_erasing=-0.25", "a number in [0, 1]"]),
    ("warm-up negative", set_recipe("warmup_epochs", "-3"), ["warmup_epochs=-3", "a number >= 0"]),
    ("warm-up past training", set_recipe("warmup_epochs", "400"), ["warmup_epochs=400", "epochs=300", "[0, epochs]"]),
    ("mixup alpha negative", set_recipe("mixup_alpha", "-1.0"), ["mixup_alpha=-1.0", "a number >= 0"]),
    ("cutmix probability above 1", set_recipe("mixup_switch_prob", "1.5"), ["mixup_switch_prob=1.5", "[0, 1]"]),
    ("lr zero", set_recipe("base_lr", "0"), ["base_lr=0", "a number > 0"]),
    ("epochs fractional", set_recipe("epochs", "2.5"), ["epochs=2.5", "a whole number"]),
    ("one beta", set_recipe("betas", "[0.9]"), ["betas=[0.9]", "a list of 2 finite numbers"]),
    ("beta of 1", set_recipe("betas", "[0.9, 1.0]"), ["betas=[0.9, 1.0]", "two numbers in [0, 1)"]),
    ("milestones out of order", set_recipe("lr_milestones", "[0.6, 0.3]"), ["lr_milestones=[0.6, 0.3]", "increasing"]),
    ("interpolation unknown", set_recipe("interpolation", '"cubic"'), ["interpolation='cubic'", "bicubic"]),
    ("RandAugment typo", set_recipe("auto_augment", '"rand-m9-mstd0.5-incx"'),
     ["auto_augment='rand-m9-mstd0.5-incx'", "'rand-m9-mstd0.5-inc1'"]),
    ("recipe flag misspelt", set_recipe("label_smothing", "0.1"), ["unknown flag 'label_smothing'", "label_smoothing"]),
    ("depths with text", set_arch("depths", '[3, "4", 6, 3]'),
     ["[arch] depths=[3, '4', 6, 3]", "a list of whole numbers"]),
    ("depths a number", set_arch("depths", "3"), ["depths=3", "a list of whole numbers"]),
    ("head norm as text", set_arch("head_norm", '"yes"'), ["head_norm='yes'", "true or false"]),
    ("drop path of 1", set_arch("drop_path_rate", "1.0"), ["drop_path_rate=1.0", "[0, 1)"]),
    ("drop path as text", set_arch("drop_path_rate", '"0.1"'), ["drop_path_rate='0.1'", "a finite number"]),
    ("layer scale negative", set_arch("layer_scale_init", "-1e-6"), ["layer_scale_init=-1e-06", "0 (off) or > 0"]),
    ("even kernel", set_arch("kernel_size", "4"), ["kernel_size=4", "an odd whole number"]),
    ("unknown norm", set_arch("norm", '"group"'), ["norm='group'", "batch, layer"]),
    ("three stage widths for four stages", set_arch("width_factors", "[4, 8, 16]"), ["width_factors", "same stages"]),
]
META_CATALOGUE = [
    ("reference top-1 above 100", lambda t: t.replace("top1 = 81.3", "top1 = 181.3"),
     ["reference.top1=181.3", "a number in [0, 100]"]),
    ("title a number", lambda t: re.sub(r"^title = .*$", "title = 2022", t, flags=re.MULTILINE),
     ["'title'=2022", "a string"]),
]


def _edited_roadmap(tmp_path: Path, file_name: str, edit: Callable[[str], str]) -> Path:
    """A copy of the shipped roadmap as steps_dir/custom/ with one file edited; returns steps_dir."""
    steps_dir = tmp_path / "steps"
    shutil.copytree(DEFAULT_STEPS_DIR / "resnet50_to_convnext_t", steps_dir / "custom")
    path = steps_dir / "custom" / file_name
    edited = edit(path.read_text())
    assert edited != path.read_text(), "the edit changed nothing"
    path.write_text(edited)
    return steps_dir


def _assert_one_line(result, file_name: str, fragments: list[str]) -> None:
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, f"exit {result.returncode}: {output[-1000:]}"
    assert len(output.splitlines()) == 1, output[-1000:]
    for fragment in [file_name, *fragments]:
        assert fragment in output, f"{fragment!r} not in {output!r}"


def _refused_both_ways(cli, folder: Path, file_name: str, edit: Callable[[str], str], fragments: list[str]) -> None:
    """--dry-run, then a real smoke study: each stops at the file, and the study leaves nothing behind."""
    steps_dir = _edited_roadmap(folder, file_name, edit)
    common = ("--steps-dir", str(steps_dir), "--roadmap", "custom", "--upto", "modern_recipe", "--preset", "smoke")
    _assert_one_line(cli(*common, "--dry-run", cwd=folder), file_name, fragments)
    study = cli(*common, "--seeds", "0", "--tracking-uri", f"sqlite:///{folder / 'store' / 'mlflow.db'}",
                "--checkpoint-dir", str(folder / "checkpoints"), "--results-dir", str(folder / "results"),
                "--no-progress", cwd=folder)
    _assert_one_line(study, file_name, fragments)
    left = sorted(path.name for path in folder.iterdir() if path.name != "steps")
    assert left == [], f"the refused study left {left} behind (no checkpoint, results or MLflow store may exist)"


def _failures(cli, tmp_path: Path, file_name: str, catalogue: list) -> list[str]:
    """Each entry of `catalogue` refused both ways, a few commands at once: what went wrong, by entry."""
    def check(index_and_entry) -> str:
        index, (what, edit, fragments) = index_and_entry
        try:
            _refused_both_ways(cli, tmp_path / f"case{index}", file_name, edit, fragments)
        except AssertionError as error:
            return f"{what}: {str(error).splitlines()[0]}"
        return ""

    with ThreadPoolExecutor(max_workers=4) as pool:
        return [failure for failure in pool.map(check, enumerate(catalogue)) if failure]


def test_every_bad_step_file_of_the_catalogue_stops_the_plan_and_the_study_before_anything_trains(cli, tmp_path):
    failures = _failures(cli, tmp_path, STEP_FILE, CATALOGUE)
    summary = f"{len(failures)} of {len(CATALOGUE)} bad step files not refused right:\n"
    assert not failures, summary + "\n".join(failures)


def test_a_bad_roadmap_file_stops_the_plan_and_the_study(cli, tmp_path):
    failures = _failures(cli, tmp_path, "roadmap.toml", META_CATALOGUE)
    assert not failures, "\n".join(failures)


def test_the_catalogue_is_large_and_each_entry_differs():
    assert len(CATALOGUE) >= 12
    assert len({entry[0] for entry in CATALOGUE}) == len(CATALOGUE)


def test_the_shipped_roadmaps_pass_every_check():
    for name in ("resnet50_to_convnext_t", "resnet200_to_convnext_b"):
        for step in load_roadmap(name).steps:
            step.recipe.check_warmup()


# A value outside its range for every RecipeSpec field, so that a new field cannot arrive without one.
BAD_RECIPE_VALUES = {
    "name": "", "optimizer": "lamb", "base_lr": -0.1, "reference_batch": 0, "batch_size": 0, "bn_batch": 0,
    "momentum": 1.0, "betas": (0.9, -0.1), "weight_decay": -1e-4, "no_decay_norm_and_bias": "yes", "epochs": -1,
    "warmup_epochs": -1.0, "schedule": "linear", "lr_milestones": (0.5, 1.5), "lr_decay": 0.0, "min_lr": -1e-6,
    "auto_augment": "rand-m9-x", "color_jitter": -0.4, "interpolation": "area", "mixup_alpha": -0.8,
    "cutmix_alpha": -1.0, "mixup_switch_prob": -0.5, "random_erasing": 1.25, "label_smoothing": 1.0,
    "eval_crop_pct": 1.2, "clip_grad_norm": -1.0,
}


def test_every_recipe_field_has_a_range():
    assert set(BAD_RECIPE_VALUES) == {field.name for field in dataclasses.fields(RecipeSpec)}
    for name, value in BAD_RECIPE_VALUES.items():
        with pytest.raises(SpecError, match=rf"^{name}=.* is not valid; ") as error:
            dataclasses.replace(MODERN, **{name: value})
        assert "\n" not in str(error.value)


def test_every_recipe_number_is_checked_for_its_type_and_finiteness():
    hints = typing.get_type_hints(RecipeSpec)
    numbers = {name for name, hint in hints.items() if hint is float}
    assert numbers <= set(RECIPE_RANGES), "a float field of RecipeSpec has no interval in RECIPE_RANGES"
    for name in numbers:
        for bad in (float("nan"), float("inf"), "0.1", True):
            with pytest.raises(SpecError, match=rf"^{name}="):
                dataclasses.replace(CLASSIC, **{name: bad})


def test_the_shipped_recipes_and_the_edges_of_each_range_are_valid():
    edges = {"momentum": 0.0, "label_smoothing": 0.0, "random_erasing": 1.0, "mixup_switch_prob": 0.0,
             "eval_crop_pct": 1.0, "lr_decay": 1.0, "epochs": 0, "warmup_epochs": 0, "lr_milestones": (),
             "betas": [0.0, 0.5], "base_lr": 1, "auto_augment": ""}
    for name, value in edges.items():
        dataclasses.replace(MODERN, **{name: value})


# Each field of ArchSpec that holds a list, and a list whose items have the wrong type.
@pytest.mark.parametrize(("flags", "message"), [
    ({"depths": (3, 3.0, 9, 3)}, r"depths=\[3, 3.0, 9, 3\] is not valid; a list of whole numbers"),
    ({"depths": (3, True, 9, 3)}, r"depths=.* a list of whole numbers"),
    ({"width_factors": (1, 2, "4", 8)}, r"width_factors=.* a list of whole numbers"),
    ({"width_factors": 4}, r"width_factors=4 is not valid; a list of whole numbers"),
    ({"stem_activation": 1}, r"stem_activation=1 is not valid; true or false"),
    ({"expansion": float("inf")}, r"expansion=inf is not valid; a finite number"),
    ({"base_width": 64.0}, r"base_width=64.0 is not valid; a whole number"),
])
def test_arch_lists_and_flags_are_checked_for_their_item_types(flags, message):
    with pytest.raises(SpecError, match=message):
        ArchSpec(**flags)


def test_every_arch_list_field_has_typed_items():
    hints = typing.get_type_hints(ArchSpec)
    lists = [name for name, hint in hints.items() if typing.get_origin(hint) is tuple]
    assert lists  # depths, width_factors
    for name in lists:
        with pytest.raises(SpecError, match=rf"^{name}=.* a list of "):
            dataclasses.replace(ArchSpec(), **{name: ("x",) * len(getattr(ArchSpec(), name))})


def test_interpolations_are_timms():
    from timm.data.transforms import str_to_interp_mode

    for name in INTERPOLATIONS:
        str_to_interp_mode(name)
    with pytest.raises(SpecError, match="choose one of: bilinear, bicubic"):
        dataclasses.replace(CLASSIC, interpolation="random")  # train-only in timm; evaluation needs one filter


@pytest.mark.parametrize("text", ["rand-m9-mstd0.5-inc1", "rand-m9-n3-mstd0.5", "rand-mstd1-tweights",
                                  "rand-m7-mmax12-p0.5-t3a", "rand-n2-m10-inc0-p1", "rand"])
def test_a_randaugment_string_accepted_is_one_timm_builds(text):
    from timm.data.auto_augment import rand_augment_transform

    dataclasses.replace(MODERN, auto_augment=text)
    assert rand_augment_transform(text, {"translate_const": 100, "img_mean": (124, 116, 104)}).ops


@pytest.mark.parametrize("text", ["rand-m9-mstd0.5-incx", "rand-m9.5", "randaug-m9", "rand-q5", "rand-p1.5",
                                  "rand-inc2", "rand-m9-", "augmix-m5", "original", "rand-tfoo"])
def test_a_randaugment_string_refused_is_one_timm_refuses_or_skips(text):
    """timm raises on some of these and silently ignores a section it cannot read (rand-q5, rand-m9-) or an
    unknown transform set (tfoo); the harness refuses all of them, so that a typo never trains."""
    with pytest.raises(SpecError, match=r"auto_augment=.* is not valid; '' \(none\) or 'rand'"):
        dataclasses.replace(MODERN, auto_augment=text)


def test_load_time_errors_name_the_file_in_one_line(tmp_path):
    steps_dir = _edited_roadmap(tmp_path, STEP_FILE, set_recipe("random_erasing", "-0.25"))
    with pytest.raises(RoadmapError, match=r"01_modern_recipe.toml: \[recipe_overrides\] random_erasing=-0.25"):
        load_roadmap("custom", steps_dir)


def test_a_step_file_must_be_numbered(tmp_path):
    steps_dir = _edited_roadmap(tmp_path, STEP_FILE, set_top("group", '"recipe"'))
    folder = steps_dir / "custom"
    (folder / "08_kernel_5.toml").rename(folder / "kernel_5.toml")
    with pytest.raises(RoadmapError, match=r"kernel_5.toml: a step file is named NN_<step>.toml"):
        load_roadmap("custom", steps_dir)
