"""MkDocs hook: the nav lists pages in reading order; pages not written yet are dropped, unlisted ones are added.

Several people add pages to docs/ at once: a nav entry for a page that does not exist would fail the strict build,
and a page nobody listed would be unreachable. This keeps the order of mkdocs.yml and makes both cases work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MORE = "More"


def _keep_existing(items: list[Any], docs: Path, listed: set[str]) -> list[Any]:
    """The nav entries whose page exists (sections kept while they hold one), noting every page kept."""
    kept: list[Any] = []
    for item in items:
        title, value = next(iter(item.items())) if isinstance(item, dict) else (None, item)
        if isinstance(value, list):
            children = _keep_existing(value, docs, listed)
            if children:
                kept.append({title: children})
        elif "://" in value or (docs / value).is_file():
            listed.add(value)
            kept.append(item)
    return kept


def on_config(config: Any) -> Any:
    """Filter the configured nav to existing pages and append the pages it does not list under "More"."""
    if not config.get("nav"):
        return config
    docs = Path(config["docs_dir"])
    listed: set[str] = set()
    nav = _keep_existing(config["nav"], docs, listed)
    excluded = {"hooks"}
    extra = sorted(
        p.relative_to(docs).as_posix() for p in docs.rglob("*.md")
        if p.relative_to(docs).as_posix() not in listed and p.relative_to(docs).parts[0] not in excluded
    )
    if extra:
        nav.append({MORE: extra})
    config["nav"] = nav
    return config
