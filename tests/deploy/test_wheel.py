"""The wheel `pip install .` builds carries the package's data files, not only its modules: a file left out
would only show on an installed system (e.g. safe search with no mapping)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_holds_every_data_file(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("filterd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"filterd/data/{path.name}" for path in (ROOT / "filterd" / "data").iterdir() if path.is_file()}
    assert "filterd/data/safesearch.tsv" in shipped
    assert shipped <= names, f"missing from the wheel: {sorted(shipped - names)}"
    web = ROOT / "filterd" / "web"
    pages = {f"filterd/web/{p.relative_to(web)}" for d in ("templates", "static") for p in (web / d).rglob("*.*")}
    assert {"filterd/web/templates/console/overview.html", "filterd/web/static/console.js"} <= pages
    assert pages <= names, f"the admin page's files missing from the wheel: {sorted(pages - names)}"
