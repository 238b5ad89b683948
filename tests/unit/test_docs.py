"""The docs promise what the code does: every config key documented, the README's commands real."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from filterd.config import schema
from filterd.config.load import parse_config
from filterd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
INTERNAL = {"source", "configured"}  # fields that are not YAML keys
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
    "safeguarding.alerts[].when[].days": "safeguarding.alerts[].when",
    "safeguarding.alerts[].when[].start": "safeguarding.alerts[].when",
    "safeguarding.alerts[].when[].end": "safeguarding.alerts[].when",
    "safeguarding.alerts[].when[].text": "safeguarding.alerts[].when",
    "safeguarding.notify.email.sender": "safeguarding.notify.email.from",
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


def _readme_section(title: str) -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"\n## {title}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end >= 0 else None]


def test_readme_tree_lists_every_module_once() -> None:
    """The "How it is built" tree names each file `find filterd -name '*.py'` finds, once, and no other."""
    section = _readme_section("How it is built")
    tree = section[section.index("```\nfilterd/\n") + 4 :]
    tree = tree[: tree.index("```")]
    listed: list[str] = []
    folder = ""
    for line in tree.splitlines()[1:]:
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0:
            break  # past filterd/: the repository's other folders
        if indent == 2:
            first = line.split()[0]
            folder = first if first.endswith("/") else ""
        listed += [folder + name for name in re.findall(r"(?<![\w/.-])([\w/]+\.py)\b", line)]
    on_disk = sorted(str(path.relative_to(ROOT / "filterd")) for path in (ROOT / "filterd").rglob("*.py"))
    assert sorted(listed) == on_disk, {"missing": set(on_disk) - set(listed), "not there": set(listed) - set(on_disk)}
    assert len(listed) == len(set(listed)), "a file is listed twice"


def test_readme_example_config_passes_config_check_once_its_list_exists(tmp_path: Path) -> None:
    section = _readme_section("Running it for a network")
    example = section[section.index("```yaml\n") + 8 :]
    example = example[: example.index("```")]
    assert "/etc/filterd/extra.txt" in example and "create `/etc/filterd/extra.txt` first" in section
    if not Path("/etc/filterd/extra.txt").exists():
        with pytest.raises(ConfigError) as info:
            parse_config(example, "filterd.yaml")
        assert info.value.problems == ["filterd.yaml:10: lists[1].path: no such file: /etc/filterd/extra.txt"]
    assert "`lists[1].path: no such file: /etc/filterd/extra.txt`" in section  # as the README says
    (tmp_path / "extra.txt").write_text("")
    parse_config(example.replace("/etc/filterd/extra.txt", str(tmp_path / "extra.txt")), "filterd.yaml")
