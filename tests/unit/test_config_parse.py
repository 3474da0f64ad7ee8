"""Parsers of environment text: accepted forms, messages, and hypothesis properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolguard.config import parse
from poolguard.errors import ConfigError

V = "POOLGUARD_X"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5", 1.5),
        (" 10 ", 10.0),
        ("0.5S", 0.5),
        ("100 ms", 0.1),
        (".5", 0.5),
        ("1e3ms", 1.0),
        ("+3s", 3.0),
        ("0", 0.0),
    ],
)
def test_duration_forms(text: str, seconds: float) -> None:
    assert parse.parse_duration(V, text) == seconds


@pytest.mark.parametrize(
    "text", ["", "abc", "5 sec", "-1s", "1d", "inf", "nan", "1_000", "٣s", "5ss", "1e400", "s"]
)
def test_duration_rejects_with_variable_value_and_form(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse.parse_duration(V, text)
    assert info.value.variable == V
    assert str(info.value).startswith(f"{V}={text[:80]!r}")
    assert "250ms" in str(info.value)


@pytest.mark.parametrize("text", ["0", "off", "OFF", "none", "disabled", " Never "])
def test_optional_duration_disabled(text: str) -> None:
    assert parse.parse_optional_duration(V, text) is None


def test_zero_is_kept_where_it_means_always() -> None:
    assert parse.parse_optional_duration(V, "0", zero_disables=False) == 0.0
    assert parse.parse_optional_duration(V, "off", zero_disables=False) is None


def test_optional_duration_error_mentions_off() -> None:
    with pytest.raises(ConfigError, match="or off to disable"):
        parse.parse_optional_duration(V, "soon")


def test_duration_ten_year_cap() -> None:
    assert parse.parse_duration(V, "87600h") == 87600 * 3600.0
    with pytest.raises(ConfigError, match="at most 10 years"):
        parse.parse_duration(V, "87601h")


@pytest.mark.parametrize(("text", "value"), [("5", 5), (" +7 ", 7), ("0", 0), ("-2", -2)])
def test_int(text: str, value: int) -> None:
    assert parse.parse_int(V, text) == value


@pytest.mark.parametrize("text", ["5.0", "five", "", "1e3", "9" * 19, "0x10"])
def test_int_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="whole number"):
        parse.parse_int(V, text)


def test_int_minimum() -> None:
    with pytest.raises(ConfigError, match=">= 1"):
        parse.parse_int(V, "0", minimum=1)


@pytest.mark.parametrize("text", ["0", "off", "none", "-0"])
def test_optional_int_disabled(text: str) -> None:
    assert parse.parse_optional_int(V, text) is None


def test_optional_int_value_and_minimum() -> None:
    assert parse.parse_optional_int(V, "3") == 3
    with pytest.raises(ConfigError, match="0/off to disable"):
        parse.parse_optional_int(V, "-3")


def test_float_and_optional_float() -> None:
    assert parse.parse_float(V, "0.2") == 0.2
    assert parse.parse_float(V, "1e-3") == 0.001
    assert parse.parse_optional_float(V, "0") == 0.0
    assert parse.parse_optional_float(V, "unlimited") is None
    with pytest.raises(ConfigError):
        parse.parse_float(V, "0.5", minimum=1.0)
    with pytest.raises(ConfigError):
        parse.parse_optional_float(V, "-0.1")


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("No", False)],
)
def test_bool(text: str, value: bool) -> None:
    assert parse.parse_bool(V, text) is value


def test_bool_rejects() -> None:
    with pytest.raises(ConfigError, match="1/true/yes/on"):
        parse.parse_bool(V, "maybe")


def test_choice_and_aliases() -> None:
    choices = ("auto", "on", "off")
    assert parse.parse_choice(V, " AUTO ", choices) == "auto"
    assert parse.parse_choice(V, "true", choices, {"true": "on"}) == "on"
    with pytest.raises(ConfigError, match="one of auto/on/off"):
        parse.parse_choice(V, "sometimes", choices)


def test_secret_values_are_not_shown() -> None:
    with pytest.raises(ConfigError) as info:
        parse.parse_int("POOLGUARD_API_TOKEN", "hunter2")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse.parse_int(V, "postgresql://u:hunter2@h/db")
    assert "hunter2" not in str(info.value)


def test_long_values_are_truncated() -> None:
    with pytest.raises(ConfigError) as info:
        parse.parse_int(V, "x" * 500)
    assert len(str(info.value)) < 250


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "off"),
        (0.0, "0s"),
        (0.25, "250ms"),
        (5.0, "5s"),
        (300.0, "5m"),
        (7200.0, "2h"),
        (1.5, "1.5s"),
        (90.0, "90s"),
        (0.0001, "0.0001s"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert parse.format_duration(seconds) == text


durations = st.floats(min_value=0, max_value=parse.MAX_SECONDS, allow_nan=False)


@given(durations)
def test_format_parse_round_trip(seconds: float) -> None:
    assert parse.parse_duration(V, parse.format_duration(seconds)) == seconds


@given(st.one_of(st.none(), durations.filter(lambda s: s > 0)))
def test_optional_round_trip(seconds: float | None) -> None:
    assert parse.parse_optional_duration(V, parse.format_duration(seconds)) == seconds


@given(st.integers(min_value=-(10**17), max_value=10**17))
def test_int_round_trip(value: int) -> None:
    assert parse.parse_int(V, str(value)) == value


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_round_trip(value: float) -> None:
    assert parse.parse_float(V, repr(value)) == value


PARSERS = [
    parse.parse_duration,
    parse.parse_optional_duration,
    parse.parse_int,
    parse.parse_optional_int,
    parse.parse_float,
    parse.parse_optional_float,
    parse.parse_bool,
    lambda v, t: parse.parse_choice(v, t, ("full", "equal", "decorrelated", "none")),
]


@pytest.mark.parametrize("parser", PARSERS)
@given(text=st.text())
def test_parsers_raise_only_config_error(parser: object, text: str) -> None:
    error: ConfigError | None = None
    value: object = None
    try:
        value = parser(V, text)  # type: ignore[operator]
    except ConfigError as exc:
        error = exc
    if error is not None:
        assert error.variable == V
        assert str(error).startswith(V)
    elif isinstance(value, float):
        assert math.isfinite(value)


@given(text=st.from_regex(r" *[0-9]{1,4}(\.[0-9]{0,3})? *(ms|s|m|h)? *", fullmatch=True))
def test_generated_durations_parse(text: str) -> None:
    assert parse.parse_duration(V, text) >= 0
