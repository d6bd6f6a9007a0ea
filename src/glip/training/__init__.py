"""Training: recipes (:mod:`.recipe`), the loop (:mod:`.loop`), optimizer and schedule
(:mod:`.optim`), checkpoints (:mod:`.checkpoint`), data parallelism (:mod:`.distributed`) and
losses on an annotation file (:mod:`.compute`)."""

from typing import Any

from glip.training.compute import compute_losses, deterministic_train_mode
from glip.training.recipe import RecipeError, TrainRecipe

# Imported on first use so that ``python -m glip.training.loop`` (torchrun) does not find the
# module already imported by its package.
_LOOP_NAMES = ("NonFiniteLossError", "TrainCallbacks", "train", "train_command")


def __getattr__(name: str) -> Any:
    if name in _LOOP_NAMES:
        from glip.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'glip.training' has no attribute {name!r}")


__all__ = [
    "NonFiniteLossError",
    "RecipeError",
    "TrainCallbacks",
    "TrainRecipe",
    "compute_losses",
    "deterministic_train_mode",
    "train",
    "train_command",
]
