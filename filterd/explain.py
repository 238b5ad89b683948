"""`filterd check NAME`: what filterd does with a name, and why, in words and as data.

The same lookups the DNS side makes (BypassStage, LocalStage, then PolicyStage.decide's steps one by one), so
the answer can never differ from what a client gets. The matching line is quoted from the list file itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from filterd.blocklists.local import LOCAL_LIST
from filterd.blocklists.parse import normalize_name
from filterd.blocklists.rules import rule_kind
from filterd.config.schema import Endpoint
from filterd.errors import FilterdError
from filterd.groups.model import Group
from filterd.pipeline.bypass import BYPASS_LIST, BypassStage
from filterd.pipeline.ddr import DdrStage
from filterd.pipeline.local import LocalStage
from filterd.pipeline.policy import GROUP_CATEGORY, SCHEDULE_CATEGORY, PolicyStage
from filterd.pipeline.safesearch import Rewrite


class CheckError(FilterdError):
    pass


def explain(
    name: str,
    *,
    policy: PolicyStage,
    local: LocalStage,
    bypass: BypassStage | None = None,
    ddr: DdrStage | None = None,
    safe_search: Callable[[str], Rewrite | None] | None = None,
    upstreams_for: Callable[[str], Sequence[Endpoint]],
    list_files: Mapping[str, Path],
    group: Group | None = None,
    client: str | None = None,
) -> dict[str, Any]:
    normal = normalize_name(name)
    if normal is None:
        raise CheckError(f"{name!r} is not a valid domain name")
    out: dict[str, Any] = {"name": normal}
    if client is not None:
        # who asks: the group (first match in config order) and the schedules open for it now
        out |= {
            "client": client,
            "group": group.name if group else None,
            "schedules": sorted(group.active) if group else [],
        }
    designated = ddr.explain(normal) if ddr is not None else None
    if designated is not None:  # before bypass, as on DNS: filterd serves DoT/DoH and names them
        return out | {"decision": "local", "reason": designated}
    signal = bypass.explain(normal) if bypass is not None and bypass.enabled_for(group) else None
    if signal is not None:
        return out | {
            "decision": "blocked",
            "list": BYPASS_LIST,
            "entry": signal.name,
            "reason": f"blocked by bypass protection: {signal.why} (`bypass_protection: false` turns it off)",
        }
    reason = local.explain(normal)
    if reason is not None:
        return out | {"decision": "local", "reason": reason}
    rewrite = safe_search(normal) if safe_search is not None and policy.decide(normal) is None else None
    if rewrite is not None:  # after policy, as on DNS: a blocked name stays blocked, an allowed one is rewritten
        return out | {
            "decision": "rewritten",
            "provider": rewrite.provider,
            "target": rewrite.target,
            "type": rewrite.kind,
            "reason": f"{rewrite.explain()} (`safe_search`)",
        }
    allowed = policy.allow.covers(normal)
    if allowed is not None:
        return out | {
            "decision": "allowed",
            "entry": allowed,
            "reason": f"allowed by the config's allow entry {allowed}",
        }
    mine = policy.local.match(normal)
    if mine is not None and not mine.blocked:
        return out | {
            "decision": "allowed",
            "list": LOCAL_LIST,
            "entry": mine.entry,
            "reason": f"allowed by the local entry {mine.entry} (`filterd allow`)",
        }
    if mine is not None:
        return out | {
            "decision": "blocked",
            "list": LOCAL_LIST,
            "entry": mine.entry,
            "category": LOCAL_LIST,
            "reason": f"blocked by the local entry {mine.entry} (`filterd block`)",
        }
    if group is not None and group.allows(normal) is not None:
        entry = group.allows(normal)
        return out | {
            "decision": "allowed",
            "entry": entry,
            "reason": f"allowed by group {group.name}'s allow entry {entry}",
        }
    match = policy.decide(normal, group) if group is not None else policy.matcher.match(normal)
    if match is not None and match.category in (GROUP_CATEGORY, SCHEDULE_CATEGORY):
        assert group is not None
        why = (
            f"blocked by group {group.name}'s own block entry {match.entry}"
            if match.category == GROUP_CATEGORY
            else f"blocked by the schedule {', '.join(sorted(group.active))} of group {group.name} (block: all)"
        )
        return out | {"decision": "blocked", "list": match.list, "entry": match.entry, "category": match.category,
                      "reason": why}  # fmt: skip
    if match is not None:
        path = list_files.get(match.list)
        text = quote_line(path, match.line) if path is not None else None
        where = f"{path}:{match.line}" if path is not None and match.line else match.list
        quoted = f": {text!r}" if text is not None else ""
        rule = rule_kind(match.entry)
        by = f"the {rule} {match.entry} of list {match.list}" if rule != "name" else f"list {match.list}"
        return out | {
            "decision": "blocked",
            "list": match.list,
            "entry": match.entry,
            "rule": rule,
            "line": match.line,
            "text": text,
            "file": str(path) if path is not None else None,
            "category": match.category,
            "reason": f"blocked by {by} ({match.category}), {where}{quoted}",
        }
    upstreams = upstreams_for(normal)
    to = ", ".join(map(str, upstreams)) or "the upstreams"
    return out | {
        "decision": "forwarded",
        "upstreams": [str(u) for u in upstreams],
        "reason": f"not blocked: forwarded to {to}" + (f" (client group {group.name})" if group else ""),
    }


def quote_line(path: Path, line: int) -> str | None:
    """Line `line` (1-based) of a list file, as it is on disk now; None when it cannot be read."""
    if line <= 0:
        return None
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            found = next(itertools.islice(handle, line - 1, line), None)
    except OSError:
        return None
    return None if found is None else found.rstrip("\r\n")
