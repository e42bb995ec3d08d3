"""Every document the code and the READMEs refer to is inside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MD_REF = re.compile(r"(?<![\w/.-])((?:\.\./|[\w-]+/)*[\w.-]+\.md)\b")
OUTSIDE = re.compile(r"\.\./" + "shared|" + "shared/" + "design")  # split: this line must not match itself


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith((".py", ".md", ".toml", ".proto", ".sh", ".cron", "Makefile"))
            and (ROOT / n).is_file()]


def test_every_referenced_document_exists_in_the_repository() -> None:
    missing, outside = [], []
    for path in _tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{lineno}"
            if OUTSIDE.search(line):
                outside.append(where)
            for ref in MD_REF.findall(line):
                if not ((ROOT / ref).is_file() or (path.parent / ref).is_file()):
                    missing.append(f"{where}: {ref}")
    assert not outside, "references outside the repository:\n" + "\n".join(outside)
    assert not missing, "documents referred to but not in the repository:\n" + "\n".join(missing)


def test_the_architecture_document_covers_its_subjects() -> None:
    text = (ROOT / "docs/architecture.md").read_text(encoding="utf-8")
    for heading in ("## The three planes", "## Layers", "### API", "### Model signature", "### Events",
                    "### Redis key layout", "## Embedded defaults and production", "## Folder map"):
        assert heading in text, heading
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists() or p.name in
               ("deploy", "docs", "bench", "tests")}
    for folder in folders:
        assert f"| `{folder}/` |" in text, f"the folder map misses {folder}/"
