"""The one enum parser: every fixed set of values reads its strings, and refuses the rest, alike."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepcloak.attacks.base import Norm, parse_norm
from deepcloak.cloak.taps import Side, parse_side
from deepcloak.data.sets import Split
from deepcloak.data.splits import ValFrom
from deepcloak.enums import parse_enum
from deepcloak.errors import DeepCloakError, LayerError
from deepcloak.evaluation.config import EvaluationLevel
from deepcloak.evaluation.results import ThreatModel
from deepcloak.models.precision import Precision, parse_precision
from deepcloak.models.train import OptimizerName, Schedule, TrainSettings
from tests.fuzz_settings import fuzz_settings


def _optimizer(value: Any) -> Any:
    return TrainSettings(epochs=1, optimizer=value).optimizer


def _schedule(value: Any) -> Any:
    return TrainSettings(epochs=1, schedule=value).schedule


# Each enum, the public way it is parsed, and what its error calls a value.
PARSERS: list[tuple[type[Enum], Callable[[Any], Any], str]] = [
    (EvaluationLevel, EvaluationLevel.parse, "level"),
    (ThreatModel, ThreatModel.parse, "threat model"),
    (ValFrom, ValFrom.parse, "validation source"),
    (Split, Split.parse, "split"),
    (Precision, parse_precision, "precision"),
    (Norm, parse_norm, "norm"),
    (Side, parse_side, "side"),
    (OptimizerName, _optimizer, "optimizer"),
    (Schedule, _schedule, "schedule"),
]
IDS = [cls.__name__ for cls, _, _ in PARSERS]


class Colour(str, Enum):
    RED = "red"
    DARK_BLUE = "dark blue"


@pytest.mark.parametrize(("cls", "parse", "what"), PARSERS, ids=IDS)
def test_each_enum_reads_its_members_and_their_strings(
    cls: type[Enum], parse: Callable[[Any], Any], what: str
) -> None:
    for member in cls:
        assert parse(member) is member
        assert parse(member.value) is member


@pytest.mark.parametrize(("cls", "parse", "what"), PARSERS, ids=IDS)
def test_each_enum_refuses_other_text_with_one_message(
    cls: type[Enum], parse: Callable[[Any], Any], what: str
) -> None:
    values = ", ".join(m.value for m in cls)
    with pytest.raises(DeepCloakError) as refused:
        parse("bogus")
    assert str(refused.value) == f"unknown {what} 'bogus'; expected one of: {values}"


def test_the_rules_of_case_and_spacing_are_those_each_enum_had() -> None:
    # Precision reads its names loosely (and float32/bfloat16); the others only exactly.
    assert parse_precision(" BF16 ") is parse_precision("bfloat16") is Precision.BF16
    assert parse_precision("Float32") is Precision.FP32
    for text in ("LINF", " linf", "linf "):
        with pytest.raises(DeepCloakError, match="unknown norm"):
            parse_norm(text)
    with pytest.raises(DeepCloakError, match="unknown split 'Train'"):
        Split.parse("Train")


def test_a_chosen_error_class_and_none_for_a_side() -> None:
    assert parse_side(None) is None
    with pytest.raises(LayerError, match="unknown side 'up'; expected one of: input, output"):
        parse_side("up")
    with pytest.raises(LayerError):
        parse_enum(Colour, "green", what="colour", error=LayerError)


@pytest.mark.parametrize("value", [None, 3, 0.5, ["red"], {"red": 1}, b"red", Side.INPUT])
def test_values_that_are_not_text_are_refused_plainly(value: Any) -> None:
    with pytest.raises(DeepCloakError, match=r"unknown colour .*; expected one of: red, dark blue"):
        parse_enum(Colour, value, what="colour")


def test_aliases_are_read_stripped_and_lower_cased() -> None:
    aliases = {"crimson": Colour.RED, "navy": Colour.DARK_BLUE}
    assert parse_enum(Colour, "  NAVY ", what="colour", aliases=aliases) is Colour.DARK_BLUE
    assert parse_enum(Colour, "dark blue", what="colour", aliases=aliases) is Colour.DARK_BLUE
    with pytest.raises(DeepCloakError, match="expected one of: red, dark blue"):
        parse_enum(Colour, "Dark Blue", what="colour", aliases=aliases)  # not an alias


@settings(fuzz_settings(), max_examples=max(300, fuzz_settings().max_examples))  # cheap
@given(text=st.one_of(st.text(), st.sampled_from(["red", "dark blue", " red", "RED", "crimson"])))
def test_any_text_is_a_member_or_an_error_listing_the_members(text: str) -> None:
    aliases = {"crimson": Colour.RED}
    try:
        member = parse_enum(Colour, text, what="colour", aliases=aliases)
    except DeepCloakError as e:
        assert str(e) == f"unknown colour {text!r}; expected one of: red, dark blue"
        assert text not in ("red", "dark blue") and text.strip().lower() != "crimson"
    else:
        assert member.value == text or aliases[text.strip().lower()] is member
