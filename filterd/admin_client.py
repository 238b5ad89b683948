"""The CLI's side of the admin API: find the running server from the config, send the token, read JSON."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from filterd.config.schema import Config
from filterd.errors import FilterdError


class AdminError(FilterdError):
    """The admin API could not be used; the message is one line that says what to do."""


class AdminClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_config(cls, config: Config) -> AdminClient:
        if config.admin is None:
            raise AdminError(f"{config.source}: the admin API is off (no admin section): add admin.listen")
        endpoint = config.admin.listen
        host = "127.0.0.1" if endpoint.host == "0.0.0.0" else "::1" if endpoint.host == "::" else endpoint.host
        authority = f"[{host}]" if ":" in host else host
        return cls(f"http://{authority}:{endpoint.port}", read_token(config.admin.token_file))

    def get(self, path: str, **query: str) -> Any:
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        return self._request("GET", path + suffix, None)

    def get_text(self, path: str, **query: str) -> str:
        """A text answer (the report), with the same errors as get()."""
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        return str(self._request("GET", path + suffix, None, text=True))

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._request("POST", path, body or {})

    def _request(self, method: str, path: str, body: dict[str, Any] | None, text: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
                return raw.decode("utf-8") if text else json.loads(raw)
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read())
            except ValueError:
                payload = {"error": exc.reason}
            if exc.code == 401:
                raise AdminError(
                    "the admin API refused the token (401): is this the token file the server uses?"
                ) from None
            if exc.code == 400 and isinstance(payload, dict) and "errors" in payload:
                return payload  # e.g. a reload refused: the caller prints the errors
            raise AdminError(f"{method} {path}: {exc.code}: {payload.get('error', exc.reason)}") from None
        except urllib.error.URLError as exc:
            raise AdminError(
                f"cannot reach filterd's admin API at {self.base_url}: {exc.reason} "
                "(is filterd running with this config? use --config, or --offline for `check`)"
            ) from None
        except TimeoutError:
            raise AdminError(f"filterd's admin API at {self.base_url} did not answer in {self.timeout:.0f}s") from None


def read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise AdminError(f"no admin token at {path}: filterd creates it at its first start") from None
    except PermissionError:
        raise AdminError(
            f"cannot read the admin token {path}: permission denied (run as root or the filterd user)"
        ) from None
    if not token:
        raise AdminError(f"the admin token file {path} is empty")
    return token
