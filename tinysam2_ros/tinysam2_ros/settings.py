"""One definition per setting: dataclass fields that describe themselves.

A setting is a dataclass field whose metadata carries its description::

    token_budget: int = field(default=0, metadata={
        "help": "spatial memory tokens per object (0 = no limit)",
        "range": (0, 1_000_000),   # inclusive, or None
        "choices": None,           # or a tuple of allowed values
        "live": True,              # may change while the node runs
    })

From that one declaration this module makes the node's ROS parameters (``param_specs``,
with a prefix such as ``"memory."``), the command line flags (``add_cli_flags``) and
checks values (``check_fields``). Fields without ``"help"`` are internal: neither a
parameter nor a flag. Optional ``"flag"`` renames the CLI flag (``--memory`` for
``compression``).

A generated parameter or flag is *unset* by default, meaning "use the preset's value":
the ROS parameter holds ``""`` (strings) or ``-1`` (numbers; their range must then
start at 0 or above), the flag is ``None``. Only set values override the preset. A
ROS bool cannot be unset, so a bool setting is a string parameter ``""`` / ``"true"`` /
``"false"`` (a preset's ``true`` can then be switched off); its CLI flag is ``--x`` / ``--no-x``.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, get_type_hints

UNSET_TEXT = ""
UNSET_NUMBER = -1


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter of the node: default, description, and what it may hold."""

    name: str
    default: Any
    description: str
    live: bool = False  # may change while the node is configured
    range: tuple[float, float] | None = None  # inclusive
    choices: tuple[str, ...] | None = None


def settings_of(cls) -> list[tuple[dataclasses.Field, type]]:
    """The described fields of a settings dataclass with their Python types."""
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        kind = hints[f.name]
        if kind not in (str, int, float, bool):
            raise TypeError(f"{cls.__name__}.{f.name}: settings are str, int, float or bool, not {kind}")
        rng = f.metadata.get("range")
        if kind in (int, float) and (rng is None or rng[0] < 0):
            raise ValueError(f"{cls.__name__}.{f.name}: a numeric setting needs a range starting at >= 0 "
                             f"(-1 means 'use the preset')")
        out.append((f, kind))
    return out


BOOL_TEXT = ("true", "false")


def _unset(f: dataclasses.Field, kind: type) -> Any:
    return UNSET_TEXT if kind in (str, bool) else kind(UNSET_NUMBER)


def param_specs(cls, prefix: str) -> tuple[ParamSpec, ...]:
    """ROS parameters ``<prefix><field>`` of a settings dataclass, unset by default."""
    specs = []
    for f, kind in settings_of(cls):
        md = f.metadata
        unset = _unset(f, kind)
        rng = md.get("range")
        choices = BOOL_TEXT if kind is bool else md.get("choices")
        specs.append(ParamSpec(
            name=prefix + f.name,
            default=unset,
            description=f"{md['help']} ({unset!r} = preset)",
            live=bool(md.get("live", False)),
            range=None if rng is None else (kind(UNSET_NUMBER), rng[1]),
            choices=None if choices is None else (UNSET_TEXT, *choices),
        ))
    return tuple(specs)


def default_param_specs(cls, prefix: str) -> tuple[ParamSpec, ...]:
    """ROS parameters ``<prefix><field>`` of a settings dataclass that has no preset
    (e.g. detector association): each starts at the field's own default."""
    specs = []
    for f in dataclasses.fields(cls):
        md = f.metadata
        if "help" not in md:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        specs.append(ParamSpec(name=prefix + f.name, default=default, description=md["help"],
                               live=bool(md.get("live", False)), range=md.get("range"), choices=md.get("choices")))
    return tuple(specs)


def param_overrides(values: dict[str, Any], cls, prefix: str) -> dict[str, Any]:
    """Settings of ``cls`` set by parameters: prefix stripped, unset values left out."""
    out = {}
    for f, kind in settings_of(cls):
        name = prefix + f.name
        if name in values and values[name] != _unset(f, kind):
            out[f.name] = values[name] == "true" if kind is bool else kind(values[name])
    return out


def param_values(overrides: dict[str, Any], cls, prefix: str) -> dict[str, Any]:
    """ROS parameter values ``<prefix><field>`` of settings of ``cls`` (the inverse of
    ``param_overrides``): a bool setting is a text parameter, ``"true"`` / ``"false"``."""
    kinds = {f.name: kind for f, kind in settings_of(cls)}
    return {prefix + k: (BOOL_TEXT[0] if v else BOOL_TEXT[1]) if kinds[k] is bool else v
            for k, v in overrides.items()}


def _dest(prefix: str, name: str) -> str:
    return prefix.replace("-", "_") + name


def add_cli_flags(parser: argparse.ArgumentParser, cls, title: str, prefix: str = "") -> None:
    """One flag per setting (``--token-budget``; with ``prefix="routing-"``:
    ``--routing-dilation``), default None = the preset's value."""
    group = parser.add_argument_group(title)
    for f, kind in settings_of(cls):
        md = f.metadata
        flag = md.get("flag") or "--" + prefix + f.name.replace("_", "-")
        dest = _dest(prefix, f.name)
        rng = md.get("range")
        text = md["help"] + ("" if rng is None else f" ({rng[0]}..{rng[1]})")
        if kind is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(flag, dest=dest, type=kind, choices=md.get("choices"), default=None, help=text)


def cli_overrides(args: argparse.Namespace, cls, prefix: str = "") -> dict[str, Any]:
    """Settings of ``cls`` given on the command line (flags left out are not included)."""
    given = {f.name: getattr(args, _dest(prefix, f.name), None) for f, _ in settings_of(cls)}
    return {k: v for k, v in given.items() if v is not None}


def check_fields(obj) -> list[str]:
    """What is wrong with a settings object's values, by each field's range and choices."""
    errors = []
    for f, kind in settings_of(type(obj)):
        v = getattr(obj, f.name)
        choices, rng = f.metadata.get("choices"), f.metadata.get("range")
        if choices is not None and v not in choices:
            errors.append(f"{f.name} must be one of {list(choices)}, got {v!r}")
        elif rng is not None and not rng[0] <= v <= rng[1]:
            errors.append(f"{f.name} must be in [{rng[0]}, {rng[1]}], got {v}")
    return errors
