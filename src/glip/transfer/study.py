"""``glip finetune study``: the data-efficiency table of the GLIP paper on any COCO-format task.

Rows are tuning modes (and, with a prompt file, the same modes "with descriptive prompts"); columns
are zero-shot, k-shot and full-data AP, like the paper's ODinW tables (GLIP, section 4.2). For each
prompt variant, mode, k and seed one run draws its k-shot set with that seed and fine-tunes
(:func:`.finetune.finetune`); zero-shot is the starting model evaluated as it is (once per prompt
variant, shared by every mode). A cell is the mean AP over the seeds and its sample standard
deviation (full-data runs differ by seed only in data order, augmentation and dropout).

OUT holds ``study.json`` (settings, every run, the table; rewritten atomically after each run with
``"complete": false`` until the end, so an interrupted study goes on with ``resume``), ``study.md``
(the table, written when complete) and ``runs/<variant>-<mode>-<k>shot|all-seed<s>/`` (each
run's folder; its model is removed unless ``keep_models``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glip.pipeline import GLIP
from glip.training.loop import resolve_device
from glip.transfer.fewshot import sample_few_shot
from glip.transfer.finetune import (
    CocoSplit,
    FinetuneRecipe,
    check_same_categories,
    evaluate_split,
    finetune,
    read_detection_file,
    summary_metrics,
    torch_threads,
)
from glip.transfer.modes import check_mode
from glip.transfer.prompts import ClassPrompts, class_texts
from glip.files import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

STUDY_JSON = "study.json"
STUDY_MARKDOWN = "study.md"
FORMAT_NAME = "glip-transfer-study"
# Shots are k >= 1, 0 (zero-shot: no training) or FULL (all the training data).
FULL = None
MODE_LABELS = {"full": "full-model tuning", "prompt": "prompt tuning", "linear": "linear probing"}
VARIANT_LABELS = {"names": "class names", "descriptive": "with descriptive prompts"}
METRICS = ("AP", "AP50", "AP75")


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


def shots_label(shots: int | None) -> str:
    """Column key: ``"0"``, ``"5"``, ``"full"``."""
    return "full" if shots is FULL else str(shots)


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
    plan.train.check("--train")
    plan.test.check("--test")
    train_data = read_detection_file(plan.train.annotations)
    test_data = read_detection_file(plan.test.annotations)
    check_same_categories(train_data, test_data, plan.train.annotations, plan.test.annotations)
    variants: list[tuple[str, ClassPrompts | None]] = [("names", None)]
    if plan.prompts is not None:
        prompts = ClassPrompts.from_file(plan.prompts)
        class_texts(train_data["categories"], prompts, str(plan.train.annotations))
        variants.append(("descriptive", prompts))
    for shots in plan.shots:
        if shots:
            for seed in plan.seeds:
                sample_few_shot(train_data, shots, seed, recipe.few_shot_unit, str(plan.train.annotations))
    settings = _settings(recipe, plan, variants, train_data, test_data)
    report = _start_report(output_dir / STUDY_JSON, settings, resume)
    done = {_run_key(run) for run in report["runs"]}

    started = time.perf_counter() - report.get("seconds", 0.0)
    with torch_threads(recipe.num_threads):
        if 0 in plan.shots:
            model = None
            for variant, prompts in variants:
                if (variant, None, "0", None) in done:
                    continue
                if model is None:
                    model = GLIP.from_pretrained(recipe.model, device=resolve_device(recipe.device))
                logger.info("zero-shot evaluation (%s)", VARIANT_LABELS[variant])
                begin = time.perf_counter()
                metrics = summary_metrics(evaluate_split(model, plan.test, prompts, recipe))
                report["runs"].append(_record(variant, None, 0, None, metrics, seconds=time.perf_counter() - begin))
                _save(output_dir, report, started)
            del model
        trained_shots = [shots for shots in plan.shots if shots != 0]
        for (variant, prompts), mode, shots, seed in itertools.product(variants, plan.modes, trained_shots, plan.seeds):
            if (variant, mode, shots_label(shots), seed) in done:
                continue
            amount = "all" if shots is FULL else f"{shots}shot"
            run_dir = output_dir / "runs" / f"{variant}-{mode}-{amount}-seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)  # a run cut short before
            logger.info("run %s", run_dir.name)
            result = finetune(recipe, mode, plan.train, run_dir, shots=shots, seed=seed, prompts=prompts,
                              test_split=plan.test)
            if not plan.keep_models:
                shutil.rmtree(result.model_dir, ignore_errors=True)
            assert result.metrics is not None
            report["runs"].append(_record(
                variant, mode, shots, seed, result.metrics, seconds=result.seconds, steps=result.steps,
                train_images=result.train_images, train_boxes=result.train_boxes, run_dir=str(run_dir),
            ))
            _save(output_dir, report, started)
    report["complete"] = True
    report["table"] = study_table(report["runs"], plan, [variant for variant, _ in variants])
    _save(output_dir, report, started)
    write_text_atomic(output_dir / STUDY_MARKDOWN, study_markdown(report))
    logger.info("wrote %s and %s", output_dir / STUDY_MARKDOWN, output_dir / STUDY_JSON)
    return report


def study_table(runs: Sequence[dict[str, Any]], plan: StudyPlan, variants: Sequence[str]) -> list[dict[str, Any]]:
    """One row per mode and prompt variant (the variants of a mode next to each other); per shots
    column ``{"AP": mean over seeds, "AP_std": sample standard deviation, "AP50", ..., "n": runs}``."""
    rows = []
    for mode in plan.modes:
        for variant in variants:
            cells: dict[str, Any] = {}
            for shots in plan.shots:
                label = shots_label(shots)
                if shots == 0:
                    chosen = [run for run in runs if run["variant"] == variant and run["shots"] == "0"]
                else:
                    chosen = [run for run in runs
                              if run["variant"] == variant and run["mode"] == mode and run["shots"] == label]
                if not chosen:
                    continue
                cell: dict[str, Any] = {"n": len(chosen)}
                for metric in METRICS:
                    values = [run[metric] for run in chosen]
                    cell[metric] = statistics.fmean(values)
                    cell[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
                cells[label] = cell
            rows.append({"mode": mode, "variant": variant, "cells": cells})
    return rows


def study_markdown(report: dict[str, Any]) -> str:
    """The table (AP in percent, mean ± std over seeds) and the settings it was made with."""
    settings = report["settings"]
    columns = settings["shots"]
    headers = ["zero-shot" if label == "0" else "full data" if label == "full" else f"{label}-shot"
               for label in columns]
    lines = [
        f"# Transfer of `{settings['model']}` to `{settings['train']}`",
        "",
        f"Box AP@[.5:.95] (%) on `{settings['test']}` ({settings['test_images']} images), "
        + (f"mean ± sample standard deviation over seeds {', '.join(str(seed) for seed in settings['seeds'])}"
           if len(settings["seeds"]) > 1 else f"seed {settings['seeds'][0]}")
        + ". A k-shot set "
        f"has {'exactly k boxes' if settings['few_shot_unit'] == 'boxes' else 'k images'} per class, "
        "drawn by the seed; zero-shot is the model as it is.",
        "",
        "| tuning | prompt | " + " | ".join(headers) + " |",
        "|---|---|" + "---|" * len(headers),
    ]
    for row in report["table"]:
        cells = []
        for label in columns:
            cell = row["cells"].get(label)
            if cell is None:
                cells.append("-")
            elif cell["n"] > 1:
                cells.append(f"{100 * cell['AP']:.1f} ± {100 * cell['AP_std']:.1f}")
            else:
                cells.append(f"{100 * cell['AP']:.1f}")
        lines.append(f"| {MODE_LABELS[row['mode']]} | {VARIANT_LABELS[row['variant']]} | " + " | ".join(cells) + " |")
    recipe = settings["recipe"]
    steps = (f"{recipe['max_steps']} steps" if recipe["max_steps"]
             else f"{recipe['epochs']} epochs (few-shot sets repeated as officially)")
    if recipe.get("full_data_steps"):
        steps += f" ({recipe['full_data_steps']} steps with full data)"
    lines += [
        "",
        f"Each run: {steps} of {recipe['batch_size']} images, training sizes {recipe['min_sizes']}; "
        f"training data `{settings['train']}` ({settings['train_images']} images). Per mode (lr, weight decay): "
        + "; ".join(f"{mode} ({values['lr']:g}, {values['weight_decay']:g})"
                    for mode, values in settings["mode_settings"].items())
        + ".",
    ]
    if settings.get("prompts"):
        lines.append(f"Descriptive prompts: `{settings['prompts']}`.")
    tuned = sum(1 for run in report["runs"] if run["mode"] is not None)
    lines += ["", f"{tuned} fine-tuning runs and {len(report['runs']) - tuned} zero-shot evaluations, "
              f"{report['seconds'] / 60:.1f} min in all (`glip finetune study`, `src/glip/transfer/study.py`).", ""]
    return "\n".join(lines)


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


# --------------------------------------------------------------------------------------------------
# The report file
# --------------------------------------------------------------------------------------------------


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


def _start_report(path: Path, settings: dict[str, Any], resume: bool) -> dict[str, Any]:
    if path.exists():
        if not resume:
            raise ValueError(f"--out: {path.parent} already holds a study ({path.name}); pass --resume to go on "
                             "with it, or choose another folder")
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: cannot read the study to resume: {error}") from error
        if not isinstance(report, dict) or report.get("format") != FORMAT_NAME:
            raise ValueError(f"{path}: not a study file (format {FORMAT_NAME!r})")
        changed = _changed_settings(report.get("settings") or {}, json.loads(json.dumps(settings)))
        if changed:
            raise ValueError(f"--resume: the settings differ from those of {path} in: {', '.join(changed)}")
        logger.info("resuming %s: %d runs done", path, len(report["runs"]))
        return report
    return {"format": FORMAT_NAME, "version": 1, "complete": False, "settings": settings, "runs": [], "seconds": 0.0}


# Recipe values that change how a study runs, not its results: a resumed study may change them.
_RUN_ONLY_SETTINGS = ("device", "num_threads", "num_workers", "log_every", "progress_bar", "keep_checkpoint",
                      "eval_batch_size")


def _changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of the settings (``recipe.<key>`` for recipe values) that differ."""
    changed = [key for key in sorted(set(saved) | set(current))
               if key != "recipe" and saved.get(key) != current.get(key)]
    saved_recipe, current_recipe = saved.get("recipe") or {}, current.get("recipe") or {}
    changed += [f"recipe.{key}" for key in sorted(set(saved_recipe) | set(current_recipe))
                if key not in _RUN_ONLY_SETTINGS and saved_recipe.get(key) != current_recipe.get(key)]
    return changed


def _record(variant: str, mode: str | None, shots: int | None, seed: int | None, metrics: dict[str, Any],
            **extra: Any) -> dict[str, Any]:
    return {
        "variant": variant,
        "mode": mode,
        "shots": shots_label(shots),
        "seed": seed,
        **{name: metrics[name] for name in METRICS},
        "per_category_AP": metrics.get("per_category_AP", {}),
        **extra,
    }


def _run_key(run: dict[str, Any]) -> tuple[Any, ...]:
    return run["variant"], run["mode"], run["shots"], run["seed"]


def _save(output_dir: Path, report: dict[str, Any], started: float) -> None:
    report["seconds"] = time.perf_counter() - started
    write_json_atomic(output_dir / STUDY_JSON, report)


__all__ = [
    "FULL",
    "StudyPlan",
    "parse_modes",
    "parse_seeds",
    "parse_shots",
    "run_study",
    "shots_label",
    "study_command",
    "study_markdown",
    "study_table",
]
