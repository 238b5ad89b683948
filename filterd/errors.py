"""Exceptions: every error filterd raises derives from FilterdError."""

from __future__ import annotations


class FilterdError(Exception):
    """Base of every filterd error; the message is meant for the admin, as is."""


class ConfigError(FilterdError):
    """One or more problems in a config file, each as `PATH:LINE: dotted.key: what is wrong`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ListError(FilterdError):
    """A blocklist that cannot be used at all (unreadable, unknown builtin), named by its source."""

    def __init__(self, source: str, message: str, line: int | None = None) -> None:
        self.source = source
        self.line = line
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")
