"""Units of the policy file: one parser per kind, clear errors."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.units import UnitError, format_duration, parse_bandwidth, parse_duration, parse_rate, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5s", 5.0), ("1m", 60.0), ("1h", 3600.0), ("1.5s", 1.5), ("2d", 172800.0), (0, 0.0)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5", "5 parsecs", "fast", "", "-1s", None, True, [1]])
def test_bad_durations_say_why(bad):
    with pytest.raises(UnitError) as info:
        parse_duration(bad)
    assert "duration" in str(info.value) or "unit" in str(info.value)


def test_duration_without_unit_suggests_one():
    with pytest.raises(UnitError, match=r"needs a unit.*'10s'"):
        parse_duration(10)


@pytest.mark.parametrize(("text", "per_second"), [("10/s", 10.0), ("600/m", 10.0), ("5000/h", 5000 / 3600)])
def test_rates(text, per_second):
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("bad", ["10", "10/d", "0/s", "x/s", 10])
def test_bad_rates(bad):
    with pytest.raises(UnitError):
        parse_rate(bad)


@pytest.mark.parametrize(("text", "bytes_per_second"), [("8mbps", 1_000_000), ("500kbps", 62_500), ("1gbps", 125e6)])
def test_bandwidths_are_bits(text, bytes_per_second):
    assert parse_bandwidth(text) == pytest.approx(bytes_per_second)


@pytest.mark.parametrize(
    ("text", "size"),
    [("64KiB", 65536), ("1MiB", 1 << 20), ("2GiB", 2 << 30), ("10KB", 10_000), (512, 512), ("32kib", 32768)],
)
def test_sizes(text, size):
    assert parse_size(text) == size


def test_bad_size():
    with pytest.raises(UnitError, match="unknown size unit"):
        parse_size("3 bananas")


@given(st.integers(min_value=1, max_value=10**6))
def test_format_duration_round_trips(ms):
    seconds = ms / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
