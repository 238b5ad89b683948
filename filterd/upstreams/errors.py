"""The one error every upstream exchange raises, plain or encrypted."""

from __future__ import annotations


class UpstreamError(Exception):
    """One failed exchange; `kind` is the label of filterd_upstream_errors_total (timeout, network, tls,
    mismatch, servfail, refused)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
