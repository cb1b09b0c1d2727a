"""A sweep's search space: one dimension per config key, plain (`grid`, `choice`, `uniform`, `loguniform`,
`randint`) or conditional on another key (`{by: KEY, values: {VALUE: dimension or constant}}`), and its
parsing from the spec's `space:` mapping (see `sweeps.spec` for the format)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sweeps.key_errors import unknown_key
from trainer.errors import ConfigError, did_you_mean

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")


@dataclass(frozen=True)
class Dimension:
    """One sampled key: `kind` in KINDS, or "constant" (only inside a conditional)."""

    kind: str
    args: tuple

    @property
    def categorical(self) -> bool:
        return self.kind in ("grid", "choice", "constant")

    def values(self) -> tuple:
        """Possible values of a categorical dimension."""
        if not self.categorical:
            raise ValueError(f"{self.kind} has no finite set of values")
        return self.args

    def corners(self) -> tuple:
        """Values to validate against the config: every category, or both ends of a range."""
        if self.categorical:
            return self.args
        low, high = self.args
        return (low, high - 1) if self.kind == "randint" else (low, high)

    def sample(self, rng) -> Any:
        """One value drawn with a `numpy.random.Generator` (used by conditional dimensions)."""
        if self.kind == "constant":
            return self.args[0]
        if self.kind in ("grid", "choice"):
            return self.args[int(rng.integers(len(self.args)))]
        low, high = self.args
        if self.kind == "uniform":
            return float(rng.uniform(low, high))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        return int(rng.integers(low, high))  # randint


@dataclass(frozen=True)
class Conditional:
    """`key` is sampled from `cases[value of by]`; unset when `by` takes a value not in `cases`."""

    by: str
    cases: dict

    def case(self, value: Any) -> Dimension | None:
        return self.cases.get(value)


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    try:
        return float(value)  # YAML 1.1 reads `1e-3` as a string
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None


def parse_dimension(where: str, node: Any, *, allow_constant: bool = False) -> Dimension:
    if not isinstance(node, dict):
        if allow_constant and not isinstance(node, (list, dict)):
            return Dimension("constant", (node,))
        raise ConfigError(
            f"{where}: expected one of {{{', '.join(f'{k}: ...' for k in KINDS)}}}"
            + (" or a constant" if allow_constant else "") + f", got {node!r}"
        )
    if len(node) != 1:
        raise ConfigError(f"{where}: a dimension has exactly one of {list(KINDS)}, got {sorted(node)}")
    (kind, args), = node.items()
    if kind not in KINDS:
        raise unknown_key(kind, KINDS, where)
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}.{kind}: expected a non-empty list, got {args!r}")
    if kind in ("grid", "choice"):
        if any(isinstance(v, (list, dict)) for v in args):
            raise ConfigError(f"{where}.{kind}: values must be scalars, got {args!r}")
        if len(set(map(repr, args))) != len(args):
            raise ConfigError(f"{where}.{kind}: repeated values in {args!r}")
        return Dimension(kind, tuple(args))
    if len(args) != 2:
        raise ConfigError(f"{where}.{kind}: expected [low, high], got {args!r}")
    low, high = (_number(f"{where}.{kind}", v) for v in args)
    if not low < high:
        raise ConfigError(f"{where}.{kind}: low must be < high, got [{args[0]}, {args[1]}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}.loguniform: low must be > 0, got {args[0]}")
    if kind == "randint":
        if not (low.is_integer() and high.is_integer()):
            raise ConfigError(f"{where}.randint: expected integers, got {args!r}")
        return Dimension(kind, (int(low), int(high)))
    return Dimension(kind, (low, high))


def parse_space(node: Any, *, config_keys: list[str]) -> dict:
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise ConfigError(f"space: expected a mapping of config key -> dimension, got {node!r}")
    space: dict = {}
    for key, dim in node.items():
        where = f"space.{key}"
        if key == "ray" or str(key).startswith("ray."):
            raise ConfigError(f"{where}: Ray resources are not swept; set trial_resources instead")
        if key not in config_keys:
            raise ConfigError(f"space: {key!r} is not a training config key{did_you_mean(str(key), config_keys)}")
        if isinstance(dim, dict) and "by" in dim:
            extra = set(dim) - {"by", "values"}
            if extra:
                raise unknown_key(sorted(extra)[0], ("by", "values"), where)
            cases = dim.get("values")
            if not isinstance(cases, dict) or not cases:
                raise ConfigError(f"{where}.values: expected a mapping of {dim['by']} value -> dimension")
            parsed = {v: parse_dimension(f"{where}.values.{v}", d, allow_constant=True) for v, d in cases.items()}
            space[key] = Conditional(by=str(dim["by"]), cases=parsed)
        else:
            space[key] = parse_dimension(where, dim)
    return space
