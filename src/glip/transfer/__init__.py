"""Transfer to new detection tasks: full fine-tuning, prompt tuning and linear probing
(:mod:`.modes`), on k-shot subsets (:mod:`.fewshot`) with optional descriptive class prompts
(:mod:`.prompts`); one run (:func:`glip.transfer.finetune.finetune`) or the paper's data-efficiency
table (:func:`glip.transfer.study.run_study`)."""

from glip.transfer.fewshot import FewShotError, sample_few_shot
from glip.transfer.finetune import CocoSplit, FinetuneRecipe, FinetuneResult
from glip.transfer.modes import MODES, OFFICIAL_MODES, ModeSettings, apply_mode
from glip.transfer.prompts import ClassPrompts
from glip.transfer.study import StudyPlan, run_study

__all__ = [
    "MODES",
    "OFFICIAL_MODES",
    "ClassPrompts",
    "CocoSplit",
    "FewShotError",
    "FinetuneRecipe",
    "FinetuneResult",
    "ModeSettings",
    "StudyPlan",
    "apply_mode",
    "run_study",
    "sample_few_shot",
]
