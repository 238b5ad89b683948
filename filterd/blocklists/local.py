"""The admin's own entries: `filterd block NAME`, `filterd allow NAME`, `filterd reset NAME`.

Two small sets, each name with everything under it, kept in `<state_dir>/local.json` (written atomically)
so they survive restarts, and applied at once: the policy consults them before every list (allow first).
They are per instance: several instances share entries through a list file or URL instead.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from filterd.blocklists.parse import normalize_name
from filterd.blocklists.state import atomic_write
from filterd.errors import FilterdError

log = logging.getLogger(__name__)

#: The name `filterd lists show` and answers give these entries.
LOCAL_LIST = "local"


class LocalListError(FilterdError):
    pass


@dataclass(frozen=True, slots=True)
class LocalMatch:
    entry: str
    blocked: bool


class LocalLists:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.blocked: set[str] = set()
        self.allowed: set[str] = set()

    @classmethod
    def load(cls, path: Path | None) -> LocalLists:
        local = cls(path)
        if path is None or not path.exists():
            return local
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            local.blocked = {n for n in data.get("block", []) if normalize_name(n) == n}
            local.allowed = {n for n in data.get("allow", []) if normalize_name(n) == n}
        except (OSError, ValueError, AttributeError) as exc:
            raise LocalListError(f"{path}: unreadable local list ({exc}); fix or remove it") from None
        return local

    def _save(self) -> None:
        if self.path is None:
            raise LocalListError("local entries need a state_dir (set state_dir in the config)")
        data = {"block": sorted(self.blocked), "allow": sorted(self.allowed)}
        atomic_write(self.path, (json.dumps(data, indent=2) + "\n").encode())

    @staticmethod
    def normalize(name: str) -> str:
        normal = normalize_name(name.removeprefix("*."))
        if normal is None:
            raise LocalListError(f"{name!r} is not a valid domain name")
        return normal

    def block(self, name: str) -> str:
        """Block a name and everything under it (and drop it from the local allow set)."""
        normal = self.normalize(name)
        self.allowed.discard(normal)
        self.blocked.add(normal)
        self._save()
        return normal

    def allow(self, name: str) -> str:
        """Never block a name nor anything under it (and drop it from the local block set)."""
        normal = self.normalize(name)
        self.blocked.discard(normal)
        self.allowed.add(normal)
        self._save()
        return normal

    def reset(self, name: str) -> tuple[str, bool]:
        """Remove a name from both sets; (name, whether anything changed)."""
        normal = self.normalize(name)
        changed = normal in self.blocked or normal in self.allowed
        self.blocked.discard(normal)
        self.allowed.discard(normal)
        if changed:
            self._save()
        return normal, changed

    def match(self, qname: str) -> LocalMatch | None:
        """The most specific local entry covering `qname` (allow beats block at the same name)."""
        if not self.blocked and not self.allowed:
            return None
        name = qname
        while True:
            if name in self.allowed:
                return LocalMatch(name, blocked=False)
            if name in self.blocked:
                return LocalMatch(name, blocked=True)
            dot = name.find(".")
            if dot < 0:
                return None
            name = name[dot + 1 :]
