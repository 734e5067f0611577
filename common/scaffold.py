"""``python -m common.scaffold <slug> [--title "My Idea"]``: copy papers/_template to papers/<slug>/.

The slug may use hyphens (``my-idea`` becomes the package ``papers/my_idea`` and the session
``reproduce-my-idea``). It must be a lowercase identifier, and not an existing paper.
"""

from __future__ import annotations

import argparse
import keyword
import re
import shutil
import sys
from pathlib import Path

from common.errors import PaperzooError
from common.paths import PAPERS_DIR, session_name

TEMPLATE = "_template"
TEMPLATE_TITLE = "Template Paper"
SLUG = re.compile(r"[a-z][a-z0-9_]*")


def validate_slug(name: str, papers_dir: Path = PAPERS_DIR) -> str:
    slug = name.replace("-", "_")
    if "/" in name or "\\" in name or ".." in name:
        raise PaperzooError(f"invalid paper name '{name}': no path separators allowed")
    if not SLUG.fullmatch(slug) or keyword.iskeyword(slug):
        raise PaperzooError(
            f"invalid paper name '{name}': use a lowercase identifier (letters, digits, '-' or '_'), e.g. my-idea"
        )
    taken = {p.name for p in papers_dir.iterdir() if p.is_dir()}
    if slug in taken or session_name(slug) in {session_name(t) for t in taken}:
        raise PaperzooError(f"paper '{slug}' already exists in {papers_dir}; choose another name")
    return slug


def create(name: str, title: str | None = None, papers_dir: Path = PAPERS_DIR) -> Path:
    slug = validate_slug(name, papers_dir)
    title = title or slug.replace("_", " ").title()
    target = papers_dir / slug
    shutil.copytree(papers_dir / TEMPLATE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in target.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".yaml", ".md"):
            text = path.read_text()
            text = text.replace(f"papers.{TEMPLATE}", f"papers.{slug}").replace(TEMPLATE_TITLE, title)
            text = text.replace("reproduce-template", f"reproduce-{session_name(slug)}")
            path.write_text(text)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nox -s new-paper --", description=__doc__.splitlines()[0])
    parser.add_argument("slug")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        target = create(args.slug, args.title)
    except PaperzooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    session = session_name(target.name)
    print(f"created {target.relative_to(PAPERS_DIR.parent)}; next: read its README.md, then "
          f"`nox -s tests -- {target.relative_to(PAPERS_DIR.parent)}` and `nox -s reproduce-{session} -- scale=smoke`")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
