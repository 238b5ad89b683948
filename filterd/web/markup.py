"""HTML that escapes by default: the one place where values are escaped for the block page.

`render(template, **values)` fills `$name` placeholders; every value that is not already `Safe` (the output of
`render` or `escape`) goes through `escape`, so a value can never add markup. Templates are trusted text
(shipped files, or admin text that `fill` escapes first). Nothing here parses HTML or does I/O.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from string import Template


class Safe(str):
    """Text that is already HTML: the result of `escape`, `render` or `join`, and nothing else.

    Any str operation on it (`+`, `format`, slicing) returns a plain str, which `render` escapes again: a
    mistake shows up as visible `&lt;` on the page, never as markup.
    """

    __slots__ = ()


def escape(value: object) -> Safe:
    """`value` as HTML text: `& < > " '` escaped (safe in element content and in quoted attributes)."""
    if isinstance(value, Safe):
        return value
    return Safe(html.escape(str(value), quote=True))


def render(template: str | Template, **values: object) -> Safe:
    """Fill `$name` / `${name}` in a trusted template; each value is escaped unless it is `Safe`.

    A placeholder with no value is an error (KeyError), so a typo cannot leave `$name` on the page.
    """
    if not isinstance(template, Template):
        template = Template(template)
    return Safe(template.substitute({key: escape(value) for key, value in values.items()}))


def fill(text: str, **values: object) -> Safe:
    """Admin-written text (config `blockpage.texts`) as HTML: the text is escaped, then its `$name`
    placeholders are filled with escaped values."""
    return render(Template(escape(text)), **values)


def join(parts: Iterable[object], separator: str = "") -> Safe:
    """Concatenate, escaping every part that is not already `Safe`."""
    return Safe(escape(separator).join(escape(part) for part in parts))
