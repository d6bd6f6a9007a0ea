"""Training objective: ATSS assignment (:mod:`.assign`) and the GLIP losses (:mod:`.criterion`)."""

from glip.losses.assign import AtssAssignment, atss_assign
from glip.losses.criterion import (
    GLIPCriterion,
    TargetLike,
    centerness_targets,
    giou_loss,
)

__all__ = [
    "AtssAssignment",
    "GLIPCriterion",
    "TargetLike",
    "atss_assign",
    "centerness_targets",
    "giou_loss",
]
