"""The study's report: ``study.json`` (settings, every run, the table), kept up to date after each
run so that an interrupted study resumes, and ``study.md`` (the table of the GLIP paper's
data-efficiency study, written when complete)."""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glip.files import write_json_atomic

logger = logging.getLogger(__name__)

STUDY_JSON = "study.json"
STUDY_MARKDOWN = "study.md"
FORMAT_NAME = "glip-transfer-study"
# Shots are k >= 1, 0 (zero-shot: no training) or FULL (all the training data).
FULL = None
MODE_LABELS = {"full": "full-model tuning", "prompt": "prompt tuning", "linear": "linear probing"}
VARIANT_LABELS = {"names": "class names", "descriptive": "with descriptive prompts"}
METRICS = ("AP", "AP50", "AP75")


def shots_label(shots: int | None) -> str:
    """Column key: ``"0"``, ``"5"``, ``"full"``."""
    return "full" if shots is FULL else str(shots)


def study_table(runs: Sequence[dict[str, Any]], modes: Sequence[str], shots: Sequence[int | None],
                variants: Sequence[str]) -> list[dict[str, Any]]:
    """One row per mode and prompt variant (the variants of a mode next to each other); per shots
    column ``{"AP": mean over seeds, "AP_std": sample standard deviation, "AP50", ..., "n": runs}``."""
    rows = []
    for mode in modes:
        for variant in variants:
            cells: dict[str, Any] = {}
            for count in shots:
                label = shots_label(count)
                # Zero-shot runs have no mode: one evaluation per variant fills every mode's row.
                chosen = [run for run in runs if run["variant"] == variant and run["shots"] == label
                          and (count == 0 or run["mode"] == mode)]
                if chosen:
                    cells[label] = _cell(chosen)
            rows.append({"mode": mode, "variant": variant, "cells": cells})
    return rows


def _cell(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation over ``runs`` (the seeds) of each metric."""
    cell: dict[str, Any] = {"n": len(runs)}
    for metric in METRICS:
        values = [run[metric] for run in runs]
        cell[metric] = statistics.fmean(values)
        cell[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return cell


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


def start_report(path: Path, settings: dict[str, Any], resume: bool) -> dict[str, Any]:
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


def record(variant: str, mode: str | None, shots: int | None, seed: int | None, metrics: dict[str, Any],
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


def run_key(run: dict[str, Any]) -> tuple[Any, ...]:
    return run["variant"], run["mode"], run["shots"], run["seed"]


def save_report(output_dir: Path, report: dict[str, Any], started: float) -> None:
    report["seconds"] = time.perf_counter() - started
    write_json_atomic(output_dir / STUDY_JSON, report)


__all__ = [
    "FORMAT_NAME",
    "FULL",
    "METRICS",
    "MODE_LABELS",
    "STUDY_JSON",
    "STUDY_MARKDOWN",
    "VARIANT_LABELS",
    "record",
    "run_key",
    "save_report",
    "shots_label",
    "start_report",
    "study_markdown",
    "study_table",
]
