"""Property tests: any YAML file and any overrides give a Config or a ConfigError.

Random documents mix the real keys (so that many examples get deep into the
checks, and some are valid) with unknown keys, random scalars, lists, nulls and
plain random text. ``fedsim params`` must answer every one of them with exit 0,
or exit 2 and one ``fedsim: error:`` line: never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fedsim.cli import main
from fedsim.config import Config, ConfigError, from_dict, load_config


def _sections() -> dict[str, dict[str, Any]]:
    """``{section: {field: type}}`` of Config; top-level scalars under ``""``."""
    out: dict[str, dict[str, Any]] = {"": {}}
    for name, tp in typing.get_type_hints(Config).items():
        if dataclasses.is_dataclass(tp):
            out[name] = typing.get_type_hints(tp)
        else:
            out[""][name] = tp
    return out


SECTIONS = _sections()
DOTTED = [
    f"{section}.{name}" if section else name
    for section, fields in SECTIONS.items()
    for name in fields
]
LITERALS = sorted(
    {
        str(v)
        for fields in SECTIONS.values()
        for tp in fields.values()
        for arg in (tp, *typing.get_args(tp))
        if typing.get_origin(arg) is typing.Literal
        for v in typing.get_args(arg)
    }
)

names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and +-inf included
    st.sampled_from(LITERALS),
    names,
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))


def typed(tp: Any) -> st.SearchStrategy[Any]:
    """Values of the right type for a field (near its bounds), or anything."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Literal:
        right: st.SearchStrategy[Any] = st.sampled_from(args)
    elif type(None) in args:
        right = st.one_of(st.none(), *(typed(a) for a in args if a is not type(None)))
    elif tp is bool:
        right = st.booleans()
    elif tp is int:
        right = st.integers(min_value=-2, max_value=60)
    elif tp is float:
        right = st.one_of(st.floats(min_value=-0.5, max_value=1.5), st.floats())
    else:
        right = names
    return st.one_of(*[right] * 8, values)  # mostly the right type


@st.composite
def sections(draw: st.DrawFn, section: str) -> dict[Any, Any]:
    fields = SECTIONS[section]
    known = st.sampled_from(sorted(fields))
    keys = draw(st.lists(st.one_of(*[known] * 12, names), max_size=6))
    return {k: draw(typed(fields[k]) if k in fields else values) for k in keys}


@st.composite
def documents(draw: st.DrawFn) -> dict[Any, Any]:
    doc = draw(sections(""))
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)[1:]), max_size=6)):
        doc[section] = draw(st.one_of(sections(section), sections(section), values))
    return doc


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n")


@st.composite
def known_override(draw: st.DrawFn) -> str:
    key = draw(st.sampled_from(DOTTED))
    section, _, name = key.rpartition(".")
    return f"{key}={_yaml_value(draw(typed(SECTIONS[section][name])))}"


overrides = st.one_of(
    *[known_override()] * 8,
    st.builds(
        lambda k, v: f"{k}={v}", names, st.one_of(values.map(_yaml_value), names)
    ),
    names,
)
# Random text as the whole file, or a dumped random document.
files = st.one_of(
    st.text(max_size=200), documents().map(lambda d: yaml.safe_dump(d, sort_keys=False))
)


def _check_valid(cfg: Config) -> None:
    """What _validate promises, checked again, and a lossless round trip."""
    for section in (cfg, *(getattr(cfg, s) for s in SECTIONS if s)):
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            assert not isinstance(value, float) or math.isfinite(value), f.name
    assert 0 < cfg.model.gamma <= 1
    assert 1 <= cfg.server.clients_per_round <= cfg.data.num_clients
    assert from_dict(cfg.to_dict()) == cfg


# Derandomized: the same examples on every run, so CI cannot fail by chance; a
# longer random search (derandomize=False, max_examples=5000) passed too.
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "config.yaml"


@FUZZ
@given(text=files, extra=st.lists(overrides, max_size=4))
def test_load_config_gives_a_config_or_a_config_error(
    config_file: Path, text: str, extra: list[str]
) -> None:
    config_file.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(config_file, extra)
    except ConfigError as exc:
        assert str(exc).strip()
        return
    _check_valid(cfg)


@FUZZ
@given(extra=st.lists(overrides, max_size=6))
def test_overrides_alone_give_a_config_or_a_config_error(extra: list[str]) -> None:
    try:
        cfg = load_config(None, extra)
    except ConfigError as exc:
        assert str(exc).strip()
        return
    _check_valid(cfg)


# An override that starts with "-" is argparse's business (an unknown option).
cli_overrides = overrides.filter(lambda s: not s.startswith("-"))


@settings(FUZZ, max_examples=25)
@given(
    doc=documents(),
    extra=st.lists(cli_overrides, max_size=3),
    json_flag=st.booleans(),
)
def test_params_exits_0_or_2_with_one_error_line(
    config_file: Path, doc: dict[Any, Any], extra: list[str], json_flag: bool
) -> None:
    config_file.write_text(yaml.safe_dump(doc), encoding="utf-8")
    argv = ["params", str(config_file), *extra, *(["--json"] if json_flag else [])]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    errors = [line for line in err.getvalue().splitlines() if "fedsim: error:" in line]
    assert "Traceback" not in err.getvalue()
    if code == 0:
        assert errors == [] and out.getvalue().strip()
    else:
        assert code == 2, err.getvalue()
        assert len(errors) == 1 and errors[0].startswith("fedsim: error:"), errors


@st.composite
def alias_documents(draw: st.DrawFn) -> str:
    """A document whose value at a real key is a YAML alias bomb (nested lists).

    ``width ** depth`` leaves from a few hundred bytes of text: an error message
    that quoted the whole value would take minutes and gigabytes.
    """
    depth = draw(st.integers(min_value=1, max_value=9))
    width = draw(st.integers(min_value=2, max_value=10))
    leaf = _yaml_value(draw(scalars))
    items = [f"&a0 [{', '.join([leaf] * width)}]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    key = draw(st.sampled_from(DOTTED))
    section, _, name = key.rpartition(".")
    head = f"{section}:\n  " if section else ""
    return f"{head}{name}: [{', '.join(items)}]\n"


exponents = st.builds(
    lambda sign, mantissa, exp: f"{sign}{mantissa}e{exp}",
    st.sampled_from(["", "-", "+"]),
    st.integers(min_value=0, max_value=99),
    st.integers(min_value=-12, max_value=12).map(str) | st.just("+3"),
)


@settings(FUZZ, max_examples=40)
@given(text=alias_documents())
# Found by longer random searches: a list where a strategy name goes, and nested
# lists of long strings whose repr reprlib's per-level caps let grow to 2 kB.
@example(text="server:\n  strategy: [&a0 [null, null]]\n")
@example(
    text="data:\n  name: [&a0 [" + ", ".join(['"' + "z" * 60 + '"'] * 4) + "], "
    "&a1 [*a0, *a0, *a0, *a0], &a2 [*a1, *a1, *a1, *a1], &a3 [*a2, *a2, *a2, *a2]]\n"
)
def test_alias_bombs_give_a_short_config_error(config_file: Path, text: str) -> None:
    config_file.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(config_file, [])
    except ConfigError as exc:
        assert 0 < len(str(exc)) < 1000
        return
    _check_valid(cfg)


@settings(FUZZ, max_examples=40)
@given(
    number=exponents, key=st.sampled_from(["data.alpha", "model.gamma", "client.lr"])
)
def test_exponent_floats_are_numbers(number: str, key: str) -> None:
    try:
        cfg = load_config(None, [f"{key}={number}"])
    except ConfigError as exc:
        assert "must be a number" not in str(exc), exc  # read as a number
        return
    section, _, name = key.partition(".")
    assert getattr(getattr(cfg, section), name) == float(number)
