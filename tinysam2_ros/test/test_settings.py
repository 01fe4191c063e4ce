"""settings.py: one dataclass declaration -> ROS parameters, CLI flags, checks."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from tinysam2_ros.memory.config import MemoryConfig
from tinysam2_ros.ros import params
from tinysam2_ros.settings import (add_cli_flags, check_fields, cli_overrides, param_overrides, param_specs,
                                   param_values, settings_of)


@dataclass
class Knobs:
    mode: str = field(default="a", metadata={"help": "the mode", "choices": ("a", "b"), "range": None, "live": True})
    count: int = field(default=3, metadata={"help": "how many", "range": (0, 9), "choices": None, "live": False})
    gain: float = field(default=0.5, metadata={"help": "how much", "range": (0.0, 2.0), "choices": None,
                                                "live": True, "flag": "--amp"})
    on: bool = field(default=False, metadata={"help": "switch", "range": None, "choices": None, "live": True})
    hidden: int = 7  # no "help": internal


def test_param_specs_are_unset_by_default_and_keep_range_choices_live():
    specs = {s.name: s for s in param_specs(Knobs, "knobs.")}
    assert list(specs) == ["knobs.mode", "knobs.count", "knobs.gain", "knobs.on"]
    assert specs["knobs.mode"].default == "" and specs["knobs.mode"].choices == ("", "a", "b")
    assert specs["knobs.count"].default == -1 and specs["knobs.count"].range == (-1, 9)
    assert specs["knobs.gain"].default == -1.0 and isinstance(specs["knobs.gain"].default, float)
    assert [s.live for s in specs.values()] == [True, False, True, True]
    # a ROS bool cannot be unset: a bool setting is "" / "true" / "false", so a preset's true can be turned off
    assert specs["knobs.on"].default == "" and specs["knobs.on"].choices == ("", "true", "false")
    assert specs["knobs.count"].description == "how many (-1 = preset)"
    values = {"knobs.mode": "", "knobs.count": 0, "knobs.gain": -1.0, "knobs.on": "", "other": 5}
    assert param_overrides(values, Knobs, "knobs.") == {"count": 0}  # 0 is a value, -1 / '' are unset
    assert param_overrides({"knobs.on": "true"}, Knobs, "knobs.") == {"on": True}
    assert param_overrides({"knobs.on": "false"}, Knobs, "knobs.") == {"on": False}


def test_cli_flags_default_to_the_preset_and_check_choices():
    p = argparse.ArgumentParser()
    add_cli_flags(p, Knobs, "knobs")
    assert cli_overrides(p.parse_args([]), Knobs) == {}
    args = p.parse_args(["--mode", "b", "--count", "4", "--amp", "1.5", "--no-on"])
    assert cli_overrides(args, Knobs) == {"mode": "b", "count": 4, "gain": 1.5, "on": False}
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "c"])
    with pytest.raises(SystemExit):
        p.parse_args(["--hidden", "1"])
    q = argparse.ArgumentParser()  # a second section on the same parser: prefixed flags
    add_cli_flags(q, Knobs, "knobs", prefix="knobs-")
    assert cli_overrides(q.parse_args(["--knobs-count", "2", "--knobs-on"]), Knobs, prefix="knobs-") == {
        "count": 2, "on": True}
    # CLI settings become node parameters (`tinysam2 demo --routing-enabled` once sent a bool
    # to a text parameter and the node refused to start) and read back as the same settings
    given = cli_overrides(q.parse_args(["--knobs-count", "2", "--knobs-on"]), Knobs, prefix="knobs-")
    values = param_values(given, Knobs, "knobs.")
    assert values == {"knobs.count": 2, "knobs.on": "true"}
    assert param_overrides(values, Knobs, "knobs.") == given
    assert param_values({"on": False}, Knobs, "knobs.") == {"knobs.on": "false"}


def test_checks_and_bad_declarations():
    assert check_fields(Knobs(count=10, mode="z")) == ["mode must be one of ['a', 'b'], got 'z'",
                                                       "count must be in [0, 9], got 10"]
    assert check_fields(Knobs()) == []

    @dataclass
    class NoRange:
        n: int = field(default=1, metadata={"help": "n"})

    with pytest.raises(ValueError, match="needs a range"):
        settings_of(NoRange)

    @dataclass
    class Negative:
        x: float = field(default=0.0, metadata={"help": "x", "range": (-1.0, 1.0)})

    with pytest.raises(ValueError, match="-1 means"):
        param_specs(Negative, "n.")


def test_memory_settings_come_from_memory_config():
    """The node's memory.* parameters and the CLI's memory flags are MemoryConfig's fields."""
    names = [f.name for f, _ in settings_of(MemoryConfig)]
    assert [n for n in params.SPECS if n.startswith("memory.")] == [f"memory.{n}" for n in names]
    assert "recency_half_life" not in names  # internal
    p = argparse.ArgumentParser()
    from tinysam2_ros.cli import _add_memory_args, _memory_overrides

    _add_memory_args(p)
    args = p.parse_args(["--memory", "tinysam2", "--token-budget", "0", "--write-threshold", "0.2"])
    assert _memory_overrides(args) == {"compression": "tinysam2", "token_budget": 0, "write_threshold": 0.2}
    with pytest.raises(ValueError, match="pool_factor must be in"):
        MemoryConfig(pool_factor=0)
    with pytest.raises(ValueError, match="keep_recent"):
        MemoryConfig(num_slots=2, keep_recent=3)
