"""What a value may be, declared once and read twice: by `sam_lab.config.validate` at start (naming the key,
before anything is written) and by the constructor or function that takes the value (standalone use).

A `Range` is data: bounds (open or closed), integer-only, null allowed, a list of choices, a flag, or a list
whose items have a range. Where the declarations live:

- top-level, `trainer.*`, `metrics.*`: field metadata of the schema (`sam_lab/config.py`);
- an optimizer: the class attribute `ranges`, merged up the class hierarchy (`ranges_of`), checked by
  `BaseSGD.__init__` over every hyper-parameter;
- a function target (scheduler, dataset, model): `@declare(key=Range(...))`, which checks on every call;
- a dataclass value (`data.augment`): its fields' metadata, `{"range": Range(...)}`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class ConfigError(ValueError):
    """A user error in the configuration: reported as one line, exit code 1, no traceback."""


@dataclass(frozen=True)
class Range:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is not allowed
    hi_open: bool = False
    integer: bool = False
    null: bool = False  # None is allowed
    choices: tuple[str, ...] = ()
    flag: bool = False  # true or false
    items: bool = False  # a list whose every item has this range

    def allowed(self, typed: bool = False) -> str:
        """What the value must be, in words: `must be ...` (`typed`: say that it must be a number)."""
        if self.flag:
            return "true or false"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.lo is not None and self.hi is not None:
            bounds = f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            bounds = f"{'>' if self.lo_open else '>='} {self.lo}"
        elif self.hi is not None:
            bounds = f"{'<' if self.hi_open else '<='} {self.hi}"
        else:
            bounds = "a number"
        kind = "an integer " if self.integer else "a number " if typed else ""
        what = bounds if bounds == "a number" else kind + bounds
        if self.items:
            what = f"a list of numbers, each {what}"
        return what + (" or null" if self.null else "")

    def problem(self, value: Any) -> str | None:
        """None if `value` is allowed, else why not: 'out of range' or 'not allowed' plus `allowed()`."""
        if value is None:
            return None if self.null else f"is not allowed: must be {self.allowed()}"
        if self.flag:
            return None if isinstance(value, bool) else f"is not allowed: must be {self.allowed()}"
        if self.choices:
            return None if value in self.choices else f"is not allowed: must be {self.allowed()}"
        listed = isinstance(value, Sequence) and not isinstance(value, str)  # also an OmegaConf ListConfig
        if self.items != listed:
            return f"is not allowed: must be {self.allowed(typed=not self.items)}"
        values = value if listed else [value]
        for v in values:
            number = isinstance(v, int | float) and not isinstance(v, bool)
            if not number or (self.integer and not isinstance(v, int)):
                return f"is not allowed: must be {self.allowed(typed=True)}"
            if not math.isfinite(v):
                return "is not allowed: must be a finite number"
            low = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
            high = self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi)
            if low or high:
                return f"is out of range: must be {self.allowed()}"
        return None


def check(key: str, value: Any, rng: Range) -> None:
    """Raise ConfigError naming `key` if `value` is outside `rng`."""
    why = rng.problem(value)
    if why is not None:
        shown = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
        raise ConfigError(f"{key}={shown} {why}")


def check_values(values: Mapping[str, Any], ranges: Mapping[str, Any], prefix: str = "") -> None:
    """Check every declared key present in `values`; a dataclass type as the range checks a nested mapping."""
    for key, rng in ranges.items():
        if key not in values:
            continue
        value = values[key]
        if isinstance(rng, type) and dataclasses.is_dataclass(rng):
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            if isinstance(value, Mapping):
                check_values(value, ranges_of(rng), f"{prefix}{key}.")
            continue
        check(prefix + key, value, rng)


def declare(**ranges: Range) -> Callable[[F], F]:
    """Function targets: `@declare(gamma=Range(0.0, 1.0, lo_open=True))` records the ranges (`fn.ranges`,
    read by `validate`) and checks the arguments of every call against them."""

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            check_values(bound.arguments, ranges)
            return fn(*args, **kwargs)

        checked.ranges = ranges  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return wrap


def ranges_of(target: Any) -> dict[str, Any]:
    """The declared ranges of a target: a class's `ranges` merged up its MRO (a subclass's entry wins), a
    dataclass's field metadata, or a declared function's `ranges`."""
    if inspect.isclass(target):
        out: dict[str, Any] = {}
        for klass in reversed(target.__mro__):
            out.update(vars(klass).get("ranges", {}))
        if dataclasses.is_dataclass(target):
            out.update(
                {f.name: f.metadata["range"] for f in dataclasses.fields(target) if "range" in f.metadata}
            )
        return out
    return dict(getattr(target, "ranges", {}))


def _named(fn: Callable[..., Any]) -> tuple[list[str], bool]:
    """(named parameters, takes **kwargs) of a function or an `__init__` (without `self`)."""
    params = inspect.signature(fn).parameters.values()
    names = [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def accepted_keys(target: Any) -> list[str] | None:
    """The keyword arguments `target` accepts; None when it takes **kwargs that go nowhere we can follow.

    A class that declares `ranges` (or inherits them) passes its **kwargs up to its bases: its keys are the
    named parameters of every `__init__` from the class up to the top-most class that declares ranges (so a
    SAM variant that adds one argument and passes the rest on still refuses a misspelled key)."""
    if dataclasses.is_dataclass(target) and inspect.isclass(target):
        return [f.name for f in dataclasses.fields(target)]
    declaring = [k for k in getattr(target, "__mro__", ()) if "ranges" in vars(k)]
    if not declaring:
        names, open_ = _named(target)
        return None if open_ else names
    out: list[str] = []
    for klass in target.__mro__:
        if issubclass(klass, declaring[-1]) and "__init__" in vars(klass):
            out += [n for n in _named(vars(klass)["__init__"])[0] if n not in out]
    return out + [k for k in ranges_of(target) if k not in out]
