"""config: the one validation style of every pipeline's settings (types, ranges, dotted keys, one line)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from edgecompress import EdgecompressError
from edgecompress.config import ParamError, Settings, UnknownKey, as_dict, check, load_settings, parse_settings


@dataclass(frozen=True)
class Inner(Settings):
    rate: float = 0.5
    sizes: tuple[int, ...] = (1, 2)
    keyword: bool = field(default=False, metadata={"yaml": "global"})

    def validate(self) -> None:
        check(0 < self.rate <= 1, "rate", self.rate, "must be a number in (0, 1]")


@dataclass(frozen=True)
class Outer(Settings):
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    by_name: dict[str, Inner] = field(default_factory=lambda: {"a": Inner()})
    limit: int | None = None


def test_yaml_values_become_typed_settings():
    outer = parse_settings(Outer, {"inner": {"rate": 1, "sizes": [4, 8], "global": True},
                                   "by_name": {"b": {"rate": 0.25}}, "limit": 3})
    assert outer.inner == Inner(rate=1, sizes=(4, 8), keyword=True)
    assert outer.by_name["b"].rate == 0.25 and outer.limit == 3 and outer.name == "x"


@pytest.mark.parametrize("data, message", [
    ({"inner": {"rate": 2}}, "inner.rate=2 is invalid: must be a number in (0, 1]"),
    ({"inner": {"sizes": [1, "two"]}}, "inner.sizes='two' is invalid: must be an integer"),
    ({"inner": {"global": "yes"}}, "inner.global='yes' is invalid: must be true or false"),
    ({"by_name": {"b": {"rate": 0}}}, "by_name.b.rate=0 is invalid: must be a number in (0, 1]"),
    ({"limit": True}, "limit=True is invalid: must be an integer"),
    ({"inner": 3}, "inner=3 is invalid: must be a mapping"),
    ({"inner": {"rat": 1}}, "inner.rat is not a known parameter; allowed under inner: rate, sizes, global"),
    ({"nmae": "y"}, "nmae is not a known parameter; allowed under the top level: name, inner, by_name, limit"),
])
def test_a_bad_value_is_one_line_with_its_dotted_key(data, message):
    with pytest.raises(ParamError) as info:
        parse_settings(Outer, data)
    assert str(info.value) == message


def test_direct_construction_is_checked_the_same_way():
    with pytest.raises(ParamError, match=r"^rate=1\.5 is invalid"):
        Inner(rate=1.5)
    with pytest.raises(ParamError, match=r"^sizes=2\.5 is invalid: must be an integer"):
        Inner(sizes=[1, 2.5])
    assert Inner(sizes=[3]).sizes == (3,)  # lists are frozen to tuples
    assert issubclass(UnknownKey, ParamError) and issubclass(ParamError, EdgecompressError)


def test_as_dict_uses_yaml_names_and_lists():
    assert as_dict(Inner(sizes=(1,), keyword=True)) == {"rate": 0.5, "sizes": [1], "global": True}
    assert Outer().to_dict()["by_name"] == {"a": {"rate": 0.5, "sizes": [1, 2], "global": False}}


def test_load_settings_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    with pytest.raises(EdgecompressError, match="params.yaml: params file not found"):
        load_settings(path, Outer)
    path.write_text("inner: {rate: 9}\n")
    with pytest.raises(EdgecompressError, match=r"params.yaml: inner.rate=9 is invalid"):
        load_settings(path, Outer)
    path.write_text("- a list\n")
    with pytest.raises(EdgecompressError, match="must be a mapping of blocks"):
        load_settings(path, Outer)
    path.write_text("name: [unclosed\n")
    with pytest.raises(EdgecompressError, match="not valid YAML"):
        load_settings(path, Outer)
    path.write_text("")
    assert load_settings(path, Outer) == Outer()


@pytest.mark.parametrize("key, block", [("lr", "train"), ("temperature", "distill")])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_floats_are_refused_up_front(key, block, value):
    """`.inf` passed `lr > 0` and failed epochs later as "loss became nan ... lower train.lr" (issue 16)."""
    from edgecompress.params import parse_params
    with pytest.raises(EdgecompressError) as exc:
        parse_params({block: {key: value}})
    assert f"{block}.{key}=" in str(exc.value) and "must be a finite number" in str(exc.value)
    assert "\n" not in str(exc.value)
