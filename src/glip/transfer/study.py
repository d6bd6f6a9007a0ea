"""``glip finetune study``: the data-efficiency table of the GLIP paper on any COCO-format task.

Rows are tuning modes (and, with a prompt file, the same modes "with descriptive prompts"); columns
are zero-shot, k-shot and full-data AP, like the paper's ODinW tables (GLIP, section 4.2). For each
prompt variant, mode, k and seed one run draws its k-shot set with that seed and fine-tunes
(:func:`.finetune.run_on_data`); zero-shot is the starting model evaluated as it is (once per prompt
variant, shared by every mode). A cell is the mean AP over the seeds and its sample standard
deviation (full-data runs differ by seed only in data order, augmentation and dropout).

OUT holds ``study.json`` (settings, every run, the table; rewritten atomically after each run with
``"complete": false`` until the end, so an interrupted study goes on with ``resume``), ``study.md``
(the table, written when complete; :mod:`.report`) and
``runs/<variant>-<mode>-<k>shot|all-seed<s>/`` (each run's folder; its model is removed unless
``keep_models``). Every run is announced on stderr (``run 3/62: mode=prompt shots=1 seed=2 ...``)
and ends with its AP and the time the study has left, whatever the log level.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from glip.device import torch_threads
from glip.files import write_text_atomic
from glip.transfer.data import CocoSplit, read_task
from glip.transfer.evaluate import model_metrics
from glip.transfer.fewshot import sample_few_shot
from glip.transfer.finetune import run_on_data
from glip.transfer.modes import check_mode
from glip.transfer.prompts import ClassPrompts, class_texts
from glip.transfer.recipe import FinetuneRecipe
from glip.transfer.report import (
    FULL,
    STUDY_JSON,
    STUDY_MARKDOWN,
    VARIANT_LABELS,
    record,
    run_key,
    save_report,
    shots_label,
    start_report,
    study_markdown,
    study_table,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyPlan:
    """What a study runs.

    Attributes:
        train / test: the task's training and test files.
        shots: k values; 0 is zero-shot, None (:data:`FULL`) all the training data.
        seeds: one run per seed for every k (the seed draws the k-shot set and seeds training).
        modes: tuning modes (:mod:`.modes`).
        prompts: optional descriptive prompt file; adds the "with descriptive prompts" rows.
        keep_models: keep each run's fine-tuned model (they take disk space).
    """

    train: CocoSplit
    test: CocoSplit
    shots: tuple[int | None, ...] = (0, 1, 3, 5, 10, FULL)
    seeds: tuple[int, ...] = (0, 1, 2)
    modes: tuple[str, ...] = ("full", "prompt")
    prompts: Path | None = None
    keep_models: bool = False

    def __post_init__(self) -> None:
        if not self.shots:
            raise ValueError("--shots: give at least one of 0, k >= 1, full")
        for shots in self.shots:
            if shots is not FULL and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 0):
                raise ValueError(f"--shots: {shots!r} is not 0, a k >= 1 or full")
        if len(set(self.shots)) != len(self.shots):
            raise ValueError(f"--shots: repeated values in {list(self.shots)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(seed < 0 for seed in self.seeds):
            raise ValueError(f"--seeds: give distinct seeds >= 0, got {list(self.seeds)}")
        if not self.modes or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"--modes: give distinct modes, got {list(self.modes)}")
        for mode in self.modes:
            check_mode(mode, "--modes")


def parse_shots(text: str) -> tuple[int | None, ...]:
    """``"0,1,3,5,10,full"`` -> ``(0, 1, 3, 5, 10, None)``; errors name ``--shots``."""
    values: list[int | None] = []
    for item in (part.strip() for part in text.split(",")):
        if item in ("full", "all"):
            values.append(FULL)
        elif item.isdigit():
            values.append(int(item))
        else:
            raise ValueError(f"--shots: {item!r} is not a number of shots or 'full' (e.g. 0,1,3,5,10,full)")
    return tuple(values)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; errors name ``--seeds``."""
    items = [part.strip() for part in text.split(",")]
    if not all(item.isdigit() for item in items):
        raise ValueError(f"--seeds: expected comma-separated integers >= 0, got {text!r}")
    return tuple(int(item) for item in items)


def parse_modes(text: str) -> tuple[str, ...]:
    """``"full,prompt"`` -> ``("full", "prompt")``; errors name ``--modes``."""
    return tuple(check_mode(part.strip(), "--modes") for part in text.split(","))


def run_study(recipe: FinetuneRecipe, plan: StudyPlan, output_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Run every fine-tuning of the plan and write the table (module doc).

    Everything that can be checked before training is checked first: the files, the categories
    of test against train, the prompt file, and every k-shot draw (k larger than a class's boxes
    is an error naming the class and k).

    Returns:
        The report written to ``study.json``.
    """
    output_dir = Path(output_dir)
    train_data, test_data = read_task(plan.train, plan.test)
    assert test_data is not None
    variants = _variants(plan, train_data)
    subsets = _draw_subsets(recipe, plan, train_data)
    report = start_report(output_dir / STUDY_JSON, _settings(recipe, plan, variants, train_data, test_data), resume)
    done = {run_key(run) for run in report["runs"]}
    runs = _study_runs(plan, variants)
    progress = _StudyProgress(len(runs), len([run for run in runs if run.key in done]))
    started = time.perf_counter() - report.get("seconds", 0.0)
    with torch_threads(recipe.num_threads):
        for index, run in enumerate(runs, 1):
            if run.key in done:
                continue
            progress.announce(index, run)
            begin = time.perf_counter()
            if run.mode is None:
                entry = record(run.variant, None, 0, None, model_metrics(recipe.model, plan.test, run.prompts, recipe),
                               seconds=time.perf_counter() - begin)
            else:
                entry = _tuned_run(recipe, plan, run, subsets[run.shots, run.seed], output_dir,
                                   label=f"run {index}/{len(runs)} {run.mode} {run.amount} seed {run.seed}")
            report["runs"].append(entry)
            save_report(output_dir, report, started)
            progress.finished(index, entry["AP"], time.perf_counter() - begin)
    report["complete"] = True
    report["table"] = study_table(report["runs"], plan.modes, plan.shots, [variant for variant, _ in variants])
    save_report(output_dir, report, started)
    write_text_atomic(output_dir / STUDY_MARKDOWN, study_markdown(report))
    logger.info("wrote %s and %s", output_dir / STUDY_MARKDOWN, output_dir / STUDY_JSON)
    return report


@dataclass(frozen=True)
class _StudyRun:
    """One entry of the study: a zero-shot evaluation (``mode`` None) or a fine-tuning run."""

    variant: str
    prompts: ClassPrompts | None
    mode: str | None
    shots: int | None
    seed: int | None

    @property
    def key(self) -> tuple[Any, ...]:
        """As :func:`.report.run_key` of its record."""
        return self.variant, self.mode, shots_label(self.shots), self.seed

    @property
    def amount(self) -> str:
        return "all" if self.shots is FULL else f"{self.shots}shot"

    def describe(self) -> str:
        prompts = VARIANT_LABELS[self.variant]
        if self.mode is None:
            return f"zero-shot evaluation, prompts={prompts}"
        return f"mode={self.mode} shots={shots_label(self.shots)} seed={self.seed} prompts={prompts}"


def _study_runs(plan: StudyPlan, variants: Sequence[tuple[str, ClassPrompts | None]]) -> list[_StudyRun]:
    """Every entry in the order they run: the zero-shot evaluations, then the fine-tuning runs."""
    runs = [_StudyRun(variant, prompts, None, 0, None) for variant, prompts in variants if 0 in plan.shots]
    trained = [shots for shots in plan.shots if shots != 0]
    for (variant, prompts), mode, shots, seed in itertools.product(variants, plan.modes, trained, plan.seeds):
        runs.append(_StudyRun(variant, prompts, mode, shots, seed))
    return runs


def _variants(plan: StudyPlan, train_data: dict[str, Any]) -> list[tuple[str, ClassPrompts | None]]:
    """The prompt variants: class names, and the descriptive prompts of the plan's file (checked)."""
    variants: list[tuple[str, ClassPrompts | None]] = [("names", None)]
    if plan.prompts is not None:
        prompts = ClassPrompts.from_file(plan.prompts)
        class_texts(train_data["categories"], prompts, str(plan.train.annotations))
        variants.append(("descriptive", prompts))
    return variants


def _draw_subsets(recipe: FinetuneRecipe, plan: StudyPlan,
                  train_data: dict[str, Any]) -> dict[tuple[int | None, int], dict[str, Any]]:
    """The training data of every (shots, seed): its k-shot draw, or all of it; an impossible
    draw fails here, before any training."""
    subsets = {}
    for shots, seed in itertools.product(plan.shots, plan.seeds):
        if shots == 0:
            continue
        subsets[shots, seed] = train_data if shots is FULL else sample_few_shot(
            train_data, shots, seed, recipe.few_shot_unit, str(plan.train.annotations))
    return subsets


def _tuned_run(recipe: FinetuneRecipe, plan: StudyPlan, run: _StudyRun, data: dict[str, Any], output_dir: Path,
               label: str) -> dict[str, Any]:
    """Fine-tune on ``data`` in the run's folder and return its record."""
    assert run.mode is not None and run.seed is not None
    run_dir = output_dir / "runs" / f"{run.variant}-{run.mode}-{run.amount}-seed{run.seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a run cut short before
    result = run_on_data(recipe, run.mode, data, plan.train, run_dir, shots=run.shots, seed=run.seed,
                         prompts=run.prompts, test_split=plan.test, label=label)
    if not plan.keep_models:
        shutil.rmtree(result.model_dir, ignore_errors=True)
    assert result.metrics is not None
    return record(run.variant, run.mode, run.shots, run.seed, result.metrics, seconds=result.seconds,
                  steps=result.steps, train_images=result.train_images, train_boxes=result.train_boxes,
                  run_dir=str(run_dir))


class _StudyProgress:
    """The study's progress lines on stderr: shown whatever the log level, between the runs' bars."""

    def __init__(self, total: int, already_done: int) -> None:
        self.total = total
        self.remaining = total - already_done
        self.seconds: list[float] = []

    def announce(self, index: int, run: _StudyRun) -> None:
        tqdm.write(f"run {index}/{self.total}: {run.describe()}", file=sys.stderr)

    def finished(self, index: int, ap: float, seconds: float) -> None:
        self.seconds.append(seconds)
        self.remaining -= 1
        left = self.remaining * sum(self.seconds) / len(self.seconds)
        tqdm.write(f"run {index}/{self.total} done in {seconds:.0f} s: AP {ap:.4f}; {self.remaining} runs left, "
                   f"about {left / 60:.1f} min", file=sys.stderr)


def study_command(
    config: str | Path | None,
    overrides: Sequence[str],
    *,
    model: str | None,
    train: CocoSplit,
    test: CocoSplit,
    shots: str,
    seeds: str,
    modes: str,
    out: str | Path,
    prompts: str | Path | None = None,
    keep_models: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """``glip finetune study``: parse the comma-separated flags, then :func:`run_study`."""
    recipe = FinetuneRecipe.from_yaml(config, overrides)
    if model is not None:
        recipe = dataclasses.replace(recipe, model=model)
    plan = StudyPlan(train, test, parse_shots(shots), parse_seeds(seeds), parse_modes(modes),
                     Path(prompts) if prompts is not None else None, keep_models)
    return run_study(recipe, plan, out, resume)


def _settings(recipe: FinetuneRecipe, plan: StudyPlan, variants: Sequence[tuple[str, ClassPrompts | None]],
              train_data: dict[str, Any], test_data: dict[str, Any]) -> dict[str, Any]:
    """What the results depend on; a resumed study must have the same."""
    descriptive = dict(variants).get("descriptive")
    return {
        "model": recipe.model,
        "train": str(plan.train.annotations),
        "train_image_dir": str(plan.train.images),
        "train_images": len(train_data["images"]),
        "test": str(plan.test.annotations),
        "test_image_dir": str(plan.test.images),
        "test_images": len(test_data["images"]),
        "shots": [shots_label(shots) for shots in plan.shots],
        "seeds": list(plan.seeds),
        "modes": list(plan.modes),
        "prompts": str(plan.prompts) if plan.prompts is not None else None,
        "prompt_texts": dict(descriptive.texts) if descriptive is not None else None,
        "few_shot_unit": recipe.few_shot_unit,
        "recipe": recipe.to_dict(),
        "mode_settings": {mode: dataclasses.asdict(recipe.mode_settings(mode)) for mode in plan.modes},
    }


__all__ = [
    "StudyPlan",
    "parse_modes",
    "parse_seeds",
    "parse_shots",
    "run_study",
    "study_command",
]
