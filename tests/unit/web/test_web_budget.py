"""poolguard.web's budget decision: default from seconds= or POOLGUARD_REQUEST_DEADLINE, headers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolguard.errors import ConfigError
from poolguard.web import RequestBudget, parse_grpc_timeout, parse_request_timeout

ENV = "POOLGUARD_REQUEST_DEADLINE"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2", 2.0), ("0.25", 0.25), (" 1.5 ", 1.5), (".5", 0.5), ("5.", 5.0), ("0", 0.0)],
)
def test_x_request_timeout_decimal_seconds(text: str, seconds: float) -> None:
    assert parse_request_timeout(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "-1", "1s", "1e3", "inf", "nan", "1_0", "٣", "0x10", "1.2.3", "1" * 13, "+1"]
)
def test_x_request_timeout_malformed_is_none(text: str) -> None:
    assert parse_request_timeout(text) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("100m", 0.1), ("2S", 2.0), ("1H", 3600.0), ("3M", 180.0), ("250u", 0.00025),
     ("5n", 5e-9), ("99999999S", 99999999.0), ("0m", 0.0)],
)  # fmt: skip
def test_grpc_timeout_units(text: str, seconds: float) -> None:
    assert parse_grpc_timeout(text) == seconds


@pytest.mark.parametrize("text", ["", "100", "m", "100ms", "1s", "1h", "123456789S", "-1S", "1.5S"])
def test_grpc_timeout_malformed_is_none(text: str) -> None:
    assert parse_grpc_timeout(text) is None


SCALE = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


@given(st.integers(0, 99_999_999), st.sampled_from(sorted(SCALE)))
def test_grpc_timeout_every_well_formed_value(value: int, unit: str) -> None:
    assert math.isclose(parse_grpc_timeout(f"{value}{unit}") or 0.0, value * SCALE[unit])


@given(st.text(max_size=20))
def test_header_parsers_never_raise(text: str) -> None:
    for parse in (parse_grpc_timeout, parse_request_timeout):
        seconds = parse(text)
        assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


def headers(**values: str) -> dict[str, list[str]]:
    return {name.replace("_", "-"): [value] for name, value in values.items()}


def budget_of(budget: RequestBudget, sent: dict[str, list[str]]) -> float | None:
    return budget.for_request(lambda name: sent.get(name, []))


def test_header_budget_shortens_never_lengthens() -> None:
    budget = RequestBudget.configure(2.0, ["x-request-timeout", "grpc-timeout"], environ={})
    assert budget_of(budget, {}) == 2.0
    assert budget_of(budget, headers(x_request_timeout="0.5")) == 0.5
    assert budget_of(budget, headers(x_request_timeout="30")) == 2.0  # capped
    assert budget_of(budget, headers(grpc_timeout="100m")) == 0.1
    assert budget_of(budget, headers(grpc_timeout="1M")) == 2.0
    both = headers(grpc_timeout="700m", x_request_timeout="0.9")
    assert budget_of(budget, both) == 0.7  # the smaller one


def test_malformed_header_leaves_the_default() -> None:
    budget = RequestBudget.configure(2.0, ["x-request-timeout", "grpc-timeout"], environ={})
    for sent in (headers(x_request_timeout="soon"), headers(grpc_timeout="1.5S")):
        assert budget_of(budget, sent) == 2.0
    # a list value counts element by element; a malformed element is skipped
    assert budget_of(budget, headers(x_request_timeout="1, x, 0.5")) == 0.5


def test_headers_are_opt_in() -> None:
    budget = RequestBudget.configure(2.0, environ={})
    assert budget_of(budget, headers(x_request_timeout="0.5", grpc_timeout="1m")) == 2.0
    only_grpc = RequestBudget.configure(2.0, "grpc-timeout", environ={})  # a bare str is one name
    assert budget_of(only_grpc, headers(x_request_timeout="0.5")) == 2.0
    assert budget_of(only_grpc, headers(grpc_timeout="500m")) == 0.5


def test_without_a_default_a_header_budget_is_used_as_sent() -> None:
    budget = RequestBudget.configure(None, ["x-request-timeout"], environ={})
    assert budget_of(budget, {}) is None
    assert budget_of(budget, headers(x_request_timeout="300")) == 300.0


def test_default_from_the_environment() -> None:
    assert RequestBudget.configure(environ={ENV: "250ms"}).default == 0.25
    assert RequestBudget.configure(environ={ENV: "2m"}).default == 120.0
    assert RequestBudget.configure(environ={ENV: "off"}).default is None
    assert RequestBudget.configure(environ={ENV: "0"}).default is None
    assert RequestBudget.configure(1.0, environ={ENV: "5s"}).default == 1.0  # keyword wins


@pytest.mark.parametrize("value", ["5 sec", "-1s", "soon", "1e999"])
def test_bad_environment_value_fails_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=ENV) as info:
        RequestBudget.configure(environ={ENV: value})
    assert info.value.variable == ENV
    with pytest.raises(ConfigError, match=ENV):  # even when seconds= is passed
        RequestBudget.configure(1.0, environ={ENV: value})


def test_unset_environment_without_seconds_fails() -> None:
    with pytest.raises(ConfigError, match=ENV) as info:
        RequestBudget.configure(environ={})
    assert info.value.variable == ENV


@pytest.mark.parametrize("seconds", [-1.0, math.inf, math.nan, True, "5s"])
def test_bad_seconds_fail(seconds: object) -> None:
    with pytest.raises(ConfigError, match="seconds"):
        RequestBudget.configure(seconds, environ={})  # type: ignore[arg-type]


def test_unknown_header_name_fails() -> None:
    with pytest.raises(ConfigError, match="x-timeout"):
        RequestBudget.configure(1.0, ["X-Timeout"], environ={})


def test_the_variable_is_known_to_the_settings_loader() -> None:
    from poolguard.config import Settings

    Settings.from_env({ENV: "5s"})  # an unknown POOLGUARD_* variable would raise ConfigError


@given(
    st.one_of(st.none(), st.floats(0, 1e6)),
    st.lists(st.integers(0, 99_999_999), max_size=3),
    st.lists(st.text(max_size=8), max_size=2),
)
def test_budget_is_the_smallest_of_default_and_valid_headers(
    default: float | None, millis: list[int], junk: list[str]
) -> None:
    """Never more than the default; junk values change nothing."""
    budget = RequestBudget.configure(default, ["grpc-timeout"], environ={})
    values = [f"{m}m" for m in millis] + junk
    got = budget_of(budget, {"grpc-timeout": values})
    elements = [e for value in junk for e in value.split(",")]  # a list value, element-wise
    valid = [s for s in map(parse_grpc_timeout, elements) if s is not None]
    candidates = [m / 1000 for m in millis] + valid + ([] if default is None else [default])
    assert got == (min(candidates) if candidates else None)
