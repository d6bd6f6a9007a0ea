"""glip.plain: the one dataclass <-> plain-data parser (recipes and model configs)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from glip.config import GLIPConfig
from glip.plain import PlainDataError, from_plain, to_plain


@dataclass(frozen=True)
class _Inner:
    rate: float = 0.1
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class _Outer:
    name: str = "x"
    kind: Literal["a", "b"] = "a"
    limit: int | None = None
    inner: _Inner = field(default_factory=_Inner)
    extra: dict[str, Any] = field(default_factory=dict)


def test_round_trip_of_nested_dataclasses() -> None:
    value = _Outer("y", "b", 3, _Inner(0.5, (4,), (2.0, 3.0)), {"k": [1]})
    plain = to_plain(dataclasses.asdict(value))
    assert plain["inner"]["sizes"] == [4] and plain["inner"]["pair"] == [2.0, 3.0]
    assert from_plain(_Outer, plain) == value
    assert from_plain(_Outer, {"inner": {"rate": "1e-4"}}).inner.rate == 1e-4  # YAML 1.1's string float


def test_the_model_config_parses_with_the_same_rules() -> None:
    config = GLIPConfig()
    assert from_plain(GLIPConfig, to_plain(config.to_dict()), "config") == config
    with pytest.raises(PlainDataError, match=r"unknown key config\.swin\.depth; known keys of config\.swin"):
        from_plain(GLIPConfig, {"swin": {"depth": [2]}}, "config")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nme": "x"}, "unknown key nme; known keys of _Outer: ['name', 'kind', 'limit', 'inner', 'extra']"),
        ({"kind": "c"}, "kind: expected one of ['a', 'b'], got 'c'"),
        ({"limit": 2.5}, "limit: expected an integer, got 2.5"),
        ({"inner": {"rate": float("nan")}}, "inner.rate: expected a finite number"),
        ({"inner": {"sizes": [1, "2"]}}, "inner.sizes.1: expected an integer"),
        ({"inner": {"pair": [1.0]}}, "inner.pair: expected a list of 2 values"),
        ({"inner": 3}, "inner: expected a mapping, got 3"),
        ({"extra": []}, "extra: expected a mapping"),
    ],
)
def test_errors_name_the_key_path(data: dict, message: str) -> None:
    with pytest.raises(PlainDataError) as error:
        from_plain(_Outer, data)
    assert message in str(error.value)
