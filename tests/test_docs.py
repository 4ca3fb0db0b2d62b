"""README.md is the front page: short, and every relative link in it lands; and every file,
test and ``segkit.*`` name the README and docs/ mention exists.

The docs site (docs/, mkdocs.yml) is checked by `mkdocs build --strict` in CI; README.md is
not part of that site, so its links into docs/ are checked here, with anchors computed as
GitHub renders them (independently of mkdocs' own slugs). The names are resolved by importing
them, so a module that moves without its docs fails here.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 300

_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def _outside_code(text: str) -> list[str]:
    """The lines of a Markdown text that are not inside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: inline markup and punctuation dropped, lowercase,
    spaces to '-' (letters, digits, '-' and '_' are kept, also non-ASCII letters)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub makes for the headings of a Markdown file (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _outside_code(path.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    """The link and image targets of a Markdown file that point into the repository (a link's
    text may run over several lines)."""
    text = "\n".join(_outside_code(path.read_text(encoding="utf-8")))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return [t for t in _LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def test_slugs_follow_githubs_rule():
    assert github_slug("How the shapes are solved") == "how-the-shapes-are-solved"
    slug = github_slug("Side by side with nnU-Net's planner")
    assert slug == "side-by-side-with-nnu-nets-planner"
    assert github_slug("Augmentation keys (`data.augment`)") == "augmentation-keys-dataaugment"
    assert github_slug("Launchers: where the jobs run") == "launchers-where-the-jobs-run"


def test_readme_is_a_front_page():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; move details into docs/ (limit {MAX_LINES})"


def test_links_are_found_across_lines(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("See [the\nplan](docs/plan.md#a), `[not](x.md)`, [web](https://x.org).\n")
    assert relative_links(page) == ["docs/plan.md#a"]


def test_readme_links_into_docs():
    links = relative_links(README)
    assert any(t.startswith("docs/") for t in links), "README.md links to no docs/ page"


_PATH = re.compile(r"\b((?:tests|benchmarks|conf|segkit)/[\w/.-]+\.(?:py|yaml|sh))(?:::(\w+))?")


def mentioned_paths() -> list[tuple[str, str, str]]:
    """``(page, path, test name or "")`` for every repository file the front page and the docs
    name (``tests/x.py::test_y``, ``benchmarks/bench_unet.py``, ``conf/loss/dice_ce.yaml``)."""
    found = set()
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for path, name in _PATH.findall(page.read_text(encoding="utf-8")):
            found.add((str(page.relative_to(ROOT)), path, name))
    return sorted(found)


@pytest.mark.parametrize(("page", "path", "name"), mentioned_paths())
def test_every_file_and_test_the_docs_name_exists(page, path, name):
    assert (ROOT / path).is_file(), f"{page} names {path}, which does not exist"
    if name:
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^\s*def {name}\(", source, re.M), f"{page} names {path}::{name}"


_IMPORT = re.compile(r"^\s*from (segkit[\w.]*) import ([\w, ]+)", re.M)
_DOTTED = re.compile(r"(?<![\w.])(segkit(?:\.[A-Za-z_]\w*)+)")


def mentioned_names() -> list[tuple[str, str]]:
    """``(page, dotted name)`` for every ``segkit.x.y`` the pages name and every name their
    examples import (``from segkit.nn import UNet`` gives ``segkit.nn.UNet``)."""
    found = set()
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for module, names in _IMPORT.findall(text):
            found.update((page.name, f"{module}.{n.strip()}") for n in names.split(","))
        text = _IMPORT.sub("", text)
        found.update((page.name, name) for name in _DOTTED.findall(text))
    return sorted(found)


@pytest.mark.parametrize(("page", "dotted"), mentioned_names())
def test_every_segkit_name_the_docs_use_resolves(page, dotted):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            assert hasattr(obj, attr), f"{page} names {dotted}: {obj.__name__} has no {attr}"
            obj = getattr(obj, attr)
        return
    pytest.fail(f"{page} names {dotted}, which is not importable")


@pytest.mark.parametrize("target", relative_links(README))
def test_every_relative_link_in_the_readme_lands(target):
    file_part, _, anchor = target.partition("#")
    path = (README.parent / file_part).resolve() if file_part else README
    assert path.exists(), f"README.md links to {target}: {path} does not exist"
    if anchor:
        assert path.suffix == ".md", f"README.md links to {target}: an anchor in a non-.md file"
        found = anchors(path)
        assert anchor in found, (
            f"README.md links to {target}: no heading of {path.relative_to(ROOT)} has the anchor "
            f"#{anchor} (it has: {', '.join(sorted(found))})"
        )
