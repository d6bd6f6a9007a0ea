"""glip.data.validation: the box check shared by training data and evaluation files."""

from __future__ import annotations

import math

import pytest

from glip.data.validation import checked_bbox, entry_name


def test_entry_name_gives_file_position_and_id() -> None:
    assert entry_name("a.json", "annotations", 3, {"id": 17}) == "a.json: annotations[3] (id 17)"
    assert entry_name("a.json", "annotations", 3, {"image_id": 1}) == "a.json: annotations[3]"


def test_well_formed_boxes_come_back_as_floats() -> None:
    assert checked_bbox({"bbox": [1, 2, 3, 4]}, "w") == [1.0, 2.0, 3.0, 4.0]
    assert checked_bbox({"bbox": [1, 2, 1, 9]}, "w", "xyxy") == [1.0, 2.0, 1.0, 9.0]  # zero width: allowed
    assert checked_bbox({"box": [0, 0, 0, 5]}, "w", key="box") == [0.0, 0.0, 0.0, 5.0]


@pytest.mark.parametrize(
    ("record", "kwargs", "message"),
    [
        ({}, {}, "f.json: annotations[0] (id 5): missing field 'bbox'"),
        ({"bbox": [1, 2, 3]}, {}, "field 'bbox' must be 4 numbers [x, y, width, height]"),
        ({"bbox": [1, 2, 3, True]}, {}, "must be 4 numbers"),
        ({"bbox": [1, 2, math.nan, 4]}, {}, "field 'bbox' has a NaN or infinite value"),
        ({"bbox": [1, 2, -1, 4]}, {}, "has width -1 and height 4; both must be >= 0"),
        ({"bbox": [5, 2, 3, 4]}, {"layout": "xyxy"}, "has width -2 and height 2"),
        ({"bbox": [1, 2, 0, 4]}, {"allow_empty": False}, "has width 0 and height 4; both must be > 0"),
    ],
)
def test_broken_boxes_are_named(record: dict, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        checked_bbox(record, "f.json: annotations[0] (id 5)", **kwargs)
    assert message in str(error.value)
    assert str(error.value).startswith("f.json: annotations[0] (id 5): ")
