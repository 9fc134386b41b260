"""Strategy names -> classes: the plugin point of `strategy.name`.

A strategy module registers its class with `@register("name")`; a strategy outside
this package is named as `package.module:Class` and imported on demand. Either is a bare
strategy: a flwr `Strategy` subclass that holds no other. The wrappers (screening, norm
bound, DP, report, resume, secure aggregation) are put around it by strategies/compose.py,
never registered.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from .wrapper import StrategyWrapper

# Strategies that hold another: composed around a bare strategy, never named by `strategy.name`.
WRAPPERS: tuple[type[Strategy], ...] = (
    StrategyWrapper,
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)

STRATEGIES: dict[str, type[Strategy]] = {}

S = TypeVar("S", bound=type[Strategy])


def register(name: str) -> Callable[[S], S]:
    """Class decorator: make the strategy available as `strategy.name = name`."""

    def decorate(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"register({name!r}): {cls!r} is not a subclass of flwr's Strategy")
        if issubclass(cls, WRAPPERS):
            raise TypeError(f"register({name!r}): {cls.__qualname__} wraps another strategy; register the "
                            "bare strategy (strategies/compose.py adds the wrappers)")
        if STRATEGIES.get(name, cls) is not cls:
            raise ValueError(f"register({name!r}): name already taken by {STRATEGIES[name].__qualname__}")
        STRATEGIES[name] = cls
        return cls

    return decorate


def available_strategies() -> list[str]:
    """The registered names, sorted."""
    return sorted(STRATEGIES)


def strategy_class(name: str) -> type[Strategy]:
    """The class for a registered name or a `package.module:Class` path."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    if ":" not in name:
        raise ValueError(
            f"strategy.name: unknown strategy {name!r}; registered strategies are "
            f"{available_strategies()}, or give 'package.module:Class'"
        )
    module_name, _, qualname = name.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"strategy.name: cannot import {name!r} ({type(err).__name__}: {err})") from err
    if not (isinstance(obj, type) and issubclass(obj, Strategy)) or issubclass(obj, WRAPPERS):
        raise ValueError(
            f"strategy.name: {name!r} is not a bare strategy class (expected a subclass of "
            "flwr.serverapp.strategy.Strategy that wraps no other)"
        )
    return obj


def settings_keys(cls: type) -> tuple[str, ...]:
    """The `strategy.*` keys only this kind of strategy reads: the fields of its `Settings`
    dataclass, named as the fields of the run config's strategy section (settings/config.py).
    Keys every strategy shares (min-sites, round-timeout, proximal-mu, ...) are not in it."""
    settings = getattr(cls, "Settings", None)
    return tuple(f.name for f in dataclasses.fields(settings)) if settings is not None else ()


def read_settings(cls: type, section: Any) -> Any:
    """`cls.Settings` filled from the run config's strategy section (`cfg.strategy`)."""
    return cls.Settings(**{name: getattr(section, name) for name in settings_keys(cls)})
