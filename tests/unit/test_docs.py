"""The docs promise what the code does: every config key documented, the README's commands real."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from filterd.config import schema

ROOT = Path(__file__).resolve().parents[2]
INTERNAL = {"source"}  # fields that are not YAML keys
#: Schema fields written differently in YAML (a schedule is a mapping entry, its windows are strings).
ALIASES = {
    "schedules[].name": "schedules.NAME",
    "schedules[].when[].days": "schedules.NAME.when",
    "schedules[].when[].start": "schedules.NAME.when",
    "schedules[].when[].end": "schedules.NAME.when",
    "schedules[].when[].text": "schedules.NAME.when",
    "schedules[].block_all": "schedules.NAME.block",
    "schedules[].lists": "schedules.NAME.block",
    "schedules[].timezone": "schedules.NAME.timezone",
}


def _keys(cls: type, prefix: str) -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in INTERNAL:
            continue
        key = f"{prefix}{field.name}"
        hint = hints[field.name]
        args = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        target = hint if dataclasses.is_dataclass(hint) else (args[0] if args else None)
        if typing.get_origin(hint) is tuple and isinstance(target, type) and target is not schema.Endpoint:
            out += _keys(target, f"{key}[].")  # a list of mappings: lists[].name, blockpage.texts.help[].url
        elif isinstance(target, type) and target is not schema.Endpoint:
            out += _keys(target, f"{key}.")
        else:
            out.append(key)
    return out


def _documented_as(key: str) -> str:
    """The key as docs/config.md names it: a group's safe_search takes the same keys as the top-level one."""
    if key.startswith("groups[].safe_search."):
        return key.removeprefix("groups[].")
    return ALIASES.get(key, key)


def test_every_config_key_is_documented() -> None:
    keys = _keys(schema.Config, "")
    assert "blocking.sinkhole.ipv4" in keys and "lists[].subdomains" in keys and "metrics.listen" in keys
    text = (ROOT / "docs" / "config.md").read_text()
    missing = [k for k in keys if f"`{_documented_as(k)}`" not in text]
    assert missing == [], f"docs/config.md does not document: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test.sh" in readme
    assert "scripts/test.sh" in ci


def test_readme_install_command_installs_and_serves() -> None:
    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/pip install . && .venv/bin/filterd serve" in readme
