"""cuts3d.config_io: key=value values converted to the field types (or refused in one line), YAML files read with
one-line errors, and no import of any other cuts3d module (no import circle with cuts3d.cuts.config)."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from cuts3d.config_io import check_keys, coerce_fields, load_yaml_mapping, parse_overrides


@dataclass
class Sample:
    flag: bool = True
    count: int = 3
    rate: float = 0.5
    name: str = "x"
    weights: str | None = None
    size: int | None = None
    mode: Literal["a", "b"] = "a"
    taus: tuple[float, ...] = (0.1, 0.2)
    pair: tuple[float, float] = (0.3, 1.0)
    extra: dict[str, Any] = field(default_factory=dict)
    either: dict[str, Any] | str = field(default_factory=dict)


def coerce(**values: Any) -> dict[str, Any]:
    return coerce_fields(Sample, values, "Sample")


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("flag", "yes", True), ("flag", "No", False), ("flag", "1", True), ("flag", 0, False), ("flag", False, False),
        ("count", "12", 12), ("count", 4.0, 4), ("count", "1_000", 1000),
        ("rate", "1e-5", 1e-5), ("rate", 2, 2.0), ("rate", " 0.25 ", 0.25),
        ("name", 2024, "2024"), ("name", "a/b", "a/b"),
        ("weights", "none", "none"), ("weights", None, None),  # "none" means random weights: it stays a string
        ("size", "none", None), ("size", "null", None), ("size", "56", 56),
        ("mode", "b", "b"),
        ("taus", [0.1, "0.2"], (0.1, 0.2)), ("taus", 0.3, (0.3,)),
        ("pair", ["0.1", 1], (0.1, 1.0)),
        ("extra", {"a": 1}, {"a": 1}),
        ("either", "tiny", "tiny"), ("either", {"k": 1}, {"k": 1}),
    ],
)
def test_values_are_converted_to_the_field_type(key: str, raw: Any, expected: Any) -> None:
    out = coerce(**{key: raw})[key]
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(
    ("key", "raw", "says"),
    [
        ("flag", "maybe", "flag='maybe' is not true or false; e.g. flag=true"),
        ("flag", 2, "is not true or false"),
        ("count", "abc", "count='abc' is not an integer; e.g. count=3"),
        ("count", 2.5, "is not an integer"),
        ("count", True, "is not an integer"),
        ("rate", "abc", "rate='abc' is not a number; e.g. rate=0.5"),
        ("rate", [1], "is not a number"),
        ("name", None, "is not a string"),
        ("size", "big", "is not an integer or null"),
        ("mode", "c", "is not one of 'a', 'b'"),
        ("taus", [0.1, "abc"], "taus=[0.1, 'abc'] is not a list of numbers"),
        ("pair", [0.1], "is not a list of 2 values"),
        ("extra", "abc", "is not a mapping"),
    ],
)
def test_wrong_types_are_one_line_errors(key: str, raw: Any, says: str) -> None:
    with pytest.raises(ValueError) as info:
        coerce(**{key: raw})
    message = str(info.value)
    assert message.startswith("Sample: ") and says in message and "\n" not in message


def test_nan_and_inf_parse_so_that_the_ranges_can_refuse_them() -> None:
    assert math.isnan(coerce(rate="nan")["rate"]) and coerce(rate="inf")["rate"] == math.inf


def test_unknown_keys_are_left_for_check_keys_which_suggests_the_closest() -> None:
    assert coerce(cnt=1) == {"cnt": 1}
    with pytest.raises(ValueError, match=r"unknown Sample keys \['cnt'\] \(did you mean count\?\); valid: \["):
        check_keys(Sample, {"cnt": 1}, "Sample keys")


def test_parse_overrides() -> None:
    assert parse_overrides(["a=0.1", "b=false", "c=[1, 2]", "d=x: y: z", "e="]) == {
        "a": 0.1, "b": False, "c": [1, 2], "d": "x: y: z", "e": None
    }
    for bad in (["tau_knn"], ["=1"]):
        with pytest.raises(ValueError, match="not of the form key=value"):
            parse_overrides(bad)


def test_yaml_files_missing_malformed_or_not_a_mapping(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist; pass an existing YAML file of S to --config"):
        load_yaml_mapping(tmp_path / "missing.yaml", "S")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        load_yaml_mapping(tmp_path, "S")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ValueError, match=r"bad.yaml is not valid YAML \(.*line 2\); fix the file"):
        load_yaml_mapping(bad, "S")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(ValueError, match="bin.yaml is not UTF-8"):
        load_yaml_mapping(binary, "S")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="list.yaml: expected a mapping of S, got list"):
        load_yaml_mapping(listing, "S")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml_mapping(empty, "S") == {}


def test_config_io_imports_no_other_cuts3d_module() -> None:
    # config_io is the leaf every config module imports; importing cuts3d.cuts.config from it made a circle.
    code = (
        "import sys, cuts3d.config_io; "
        "mods = sorted(m for m in sys.modules if m.startswith('cuts3d') and m not in ('cuts3d', 'cuts3d.config_io')); "
        "assert not mods, mods"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
