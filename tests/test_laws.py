"""Law strings and validation."""

import pytest

from kvstab.errors import InputError
from kvstab.laws import Constant, Empirical, Geometric, LogNormal, Uniform, parse_law


@pytest.mark.parametrize(
    "text,expected",
    [
        ("uniform:10:1600", Uniform(10, 1600)),
        ("const:500", Constant(500)),
        ("geometric:200", Geometric(200.0)),
        ("geometric:200:4000", Geometric(200.0, 4000)),
        ("lognormal:300:0.8", LogNormal(300.0, 0.8)),
        ("lognormal:300:1.5:8000", LogNormal(300.0, 1.5, 8000)),
    ],
)
def test_parse_round_trip(text, expected):
    law = parse_law(text, "prompt")
    assert law.spec == expected.spec
    assert parse_law(law.spec).spec == law.spec


def test_parse_empirical():
    law = parse_law("empirical:5,7,7,9")
    assert isinstance(law, Empirical)
    assert law.values == (5, 7, 9)
    assert law.weights == pytest.approx((0.25, 0.5, 0.25))


@pytest.mark.parametrize(
    "text,words",
    [
        ("bogus", "cannot parse"),
        ("uniform:10", "cannot parse"),
        ("uniform:20:10", "high"),
        ("uniform:0:10", "low"),
        ("uniform:1.5:10", "integer"),
        ("const:nan", "finite"),
        ("geometric:0.5", "mean"),
        ("lognormal:300:-1", "sigma"),
        ("lognormal:300:3", "cap"),
        ("empirical:1,0,3", "integers >= 1"),
        ("empirical:a,b", "cannot parse"),
    ],
)
def test_bad_law_strings_name_the_field(text, words):
    with pytest.raises(InputError, match=words) as exc:
        parse_law(text, "output")
    assert exc.value.field == "output"
