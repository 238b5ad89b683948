"""Where the lists shipped with filterd live: inside the wheel, or `blocklists/` in a source checkout."""

from __future__ import annotations

from pathlib import Path

#: Files in blocklists/ that are not blocklists.
_NOT_LISTS = {"never-block"}


def builtin_dir() -> Path:
    packaged = Path(__file__).resolve().parent.parent / "_builtin_lists"  # laid there by the wheel build
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "blocklists"  # an editable install or a checkout


def builtin_names() -> list[str]:
    folder = builtin_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.txt") if p.stem not in _NOT_LISTS)


def builtin_path(name: str) -> Path:
    return builtin_dir() / f"{name}.txt"
