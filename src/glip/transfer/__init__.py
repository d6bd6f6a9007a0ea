"""Transfer to new detection tasks: full fine-tuning, prompt tuning and linear probing
(:mod:`.modes`), on k-shot subsets (:mod:`.fewshot`) with optional descriptive class prompts
(:mod:`.prompts`); one run (:func:`glip.transfer.finetune.finetune`) or the paper's data-efficiency
table (:func:`glip.transfer.study.run_study`).

The modules, in the order a study calls them (each calls only those after it):
``study`` (the plan, its runs and progress; ``report`` writes the table) -> ``fewshot`` (k-shot
draws) -> ``finetune`` (one run: training file, train, test AP) -> ``tuning`` (the training loop in
one mode; ``modes`` freezes, ``prompt_tuning`` saves a tuned prompt) ; ``data``, ``recipe``,
``prompts`` and ``evaluate`` serve them all.
"""

from glip.transfer.data import CocoSplit
from glip.transfer.fewshot import FewShotError, sample_few_shot
from glip.transfer.finetune import FinetuneResult, finetune
from glip.transfer.modes import MODES, OFFICIAL_MODES, ModeSettings, apply_mode
from glip.transfer.prompts import ClassPrompts
from glip.transfer.recipe import FinetuneRecipe
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
    "finetune",
    "run_study",
    "sample_few_shot",
]
