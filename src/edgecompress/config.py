"""The one way a YAML block becomes a validated settings dataclass.

Every block of every pipeline's params.yaml is a frozen dataclass deriving from `Settings`: its
fields' annotations give the types (checked here, for YAML and for direct construction alike), its
`validate()` the ranges (with `check`). Errors are `ParamError`s of one form,
`<key>=<value> is invalid: <what is allowed>`, and `build` prefixes the key with the path of the
block it sits in, so a bad value anywhere reads `distill.alpha=1.5 is invalid: must be a number in
[0, 1]`. `load_settings` adds the file name: the whole line a stage prints before it touches anything.

Each method module owns its settings class (`data.DataParams`, `prune.PruneConfig`,
`quantize.config.QuantizeConfig`, `bench.config.BenchConfig`, ...); a pipeline's schema
(`params.Params`, `zoo.params`, `detection.params`) only composes them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml

from edgecompress import EdgecompressError


class ParamError(EdgecompressError):
    """A bad value for one key; `build` adds the key's section prefix as it walks the schema."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={_as_written(value)!r} is invalid: {allowed}")

    def prefixed(self, prefix: str) -> "ParamError":
        """The same error with its key under `prefix` (no-op for an empty prefix)."""
        return type(self)(f"{prefix}.{self.key}" if prefix else self.key, self.value, self.allowed)


class UnknownKey(ParamError):
    """A key that the block does not have (a typo, or a setting of another block); `allowed` lists
    the block's keys."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        block = key.rsplit(".", 1)[0] if "." in key else "the top level"
        EdgecompressError.__init__(self, f"{key} is not a known parameter; allowed under {block}: {allowed}")


def _as_written(value: Any) -> Any:
    """A value as the user wrote it in YAML: tuples (our frozen form of lists) shown as lists."""
    if isinstance(value, tuple):
        return [_as_written(v) for v in value]
    return value


DEVICES = ("auto", "cpu", "cuda")  # what a `device` setting accepts (runtime.resolve_device reads it)


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise ParamError(key, value, allowed) unless `ok`."""
    if not ok:
        raise ParamError(key, value, allowed)


def check_budget(value: float | None, key: str) -> None:
    """An optional budget in points: null, or a finite number >= 0."""
    check(value is None or (math.isfinite(value) and value >= 0), key, value,
          "must be null or a finite number of points >= 0")


def check_choice(value: Any, key: str, choices: Iterable[str]) -> None:
    """`value` must be one of `choices` (the message lists them)."""
    choices = tuple(choices)
    check(value in choices, key, value, f"allowed: {', '.join(choices)}")


def check_distinct(values: tuple, key: str, choices: Iterable[str] | None = None, *, non_empty: bool = True) -> None:
    """A list of distinct entries (from `choices`, when given), non-empty unless told otherwise."""
    choices = tuple(choices) if choices is not None else None
    ok = (bool(values) or not non_empty) and len(set(values)) == len(values)
    ok = ok and (choices is None or all(v in choices for v in values))
    allowed = f"; allowed: {', '.join(choices)}" if choices is not None else ""
    check(ok, key, values, f"must be a {'non-empty ' if non_empty else ''}list of distinct entries{allowed}")


def check_load_policy(settings: Any) -> None:
    """`max_load`, `retries` and `wait_s` of a block whose timers watch the machine's load
    (`bench.contention.LoadPolicy`: bench, zoo, detection)."""
    check(settings.max_load is None or settings.max_load > 0, "max_load", settings.max_load,
          "must be null or cores > 0")
    check(settings.retries >= 0, "retries", settings.retries, "must be an integer >= 0")
    check(0 <= settings.wait_s <= 3600, "wait_s", settings.wait_s, "must be seconds in [0, 3600]")


def is_batch_list(values: tuple[int, ...]) -> bool:
    """A non-empty list of distinct integers >= 1 (batch sizes are keys of the results)."""
    return bool(values) and len(set(values)) == len(values) and all(v >= 1 for v in values)


# ----------------------------------------------------------------------------------------------
# Types
def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` checked against the annotation `tp`: YAML lists become tuples, mappings of a dataclass
    type become that dataclass (`build`), an instance of it is taken as it is.

    Raises:
        ParamError: naming `key`.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        inner = [t for t in options if t is not type(None)]
        return coerce(value, inner[0], key)
    if origin is dict:
        check(isinstance(value, dict) and bool(value), key, value, "must be a non-empty mapping")
        key_tp, value_tp = typing.get_args(tp)
        return {coerce(k, key_tp, key): coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        check(isinstance(value, (list, tuple)), key, value, "must be a list")
        (item_tp, _) = typing.get_args(tp)
        return tuple(coerce(v, item_tp, key) for v in value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        check(isinstance(value, dict), key, value, "must be a mapping")
        try:
            return build(tp, value)
        except ParamError as exc:
            raise exc.prefixed(key) from None
    if tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), key, value, f"must be {_type_name(tp)}")
        # .inf / .nan parse as floats in YAML and pass every range check written as a comparison
        check(math.isfinite(value), key, value, "must be a finite number")
        return value  # an int is a valid float; kept as written so errors echo the user's value
    if tp in (int, bool, str):
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        check(ok, key, value, f"must be {_type_name(tp)}")
        return value
    return value


def _yaml_names(cls: type) -> dict[str, str]:
    """YAML name -> field name; a field's metadata "yaml" renames it (`global` is a Python keyword)."""
    return {f.metadata.get("yaml", f.name): f.name for f in dataclasses.fields(cls)}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every settings block: field types are checked on construction (lists become tuples),
    then `validate()` checks the values. Subclasses are frozen dataclasses whose fields all have
    defaults; they override `validate` and raise `ParamError` through `check`."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = coerce(getattr(self, f.name), hints[f.name], f.metadata.get("yaml", f.name))
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Range and consistency checks (none by default)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with the YAML names and lists (not tuples): the form written into metrics."""
        return as_dict(self)


def as_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict form of a settings dataclass (YAML names, lists not tuples), for metrics files."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {name: plain(getattr(value, f)) for name, f in _yaml_names(type(value)).items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(obj)


def build(cls: type, data: dict[str, Any]) -> Any:
    """A `cls` from a YAML mapping: unknown keys refused, every value checked.

    Raises:
        ParamError: the key relative to `cls` (callers walking a schema prefix it).
    """
    names = _yaml_names(cls)
    for key, value in data.items():
        if key not in names:
            raise UnknownKey(key, value, ", ".join(names))
    return cls(**{names[k]: v for k, v in data.items()})


def parse_settings(schema: type, data: dict[str, Any] | None) -> Any:
    """A whole params mapping (as read from params.yaml) validated into `schema`.

    Raises:
        ParamError: one line naming the dotted key, its value and what is allowed.
    """
    return build(schema, data or {})


def load_settings(path: str | Path, schema: type) -> Any:
    """Read and validate a params file against `schema`.

    Raises:
        EdgecompressError: one line naming the file, the key, the value and what is allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgecompressError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise EdgecompressError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is not None and not isinstance(data, dict):
        raise EdgecompressError(f"{path}: must be a mapping of blocks ({', '.join(_yaml_names(schema))})")
    try:
        return parse_settings(schema, data)
    except EdgecompressError as exc:
        raise EdgecompressError(f"{path}: {exc}") from None
