"""The README and docs/ match the code: commands, attributes, carrier keys, links.

The README is the user's short page; the reference lives in docs/*.md. Each check reads
the page where that content now lives.
"""

from __future__ import annotations

import re
from pathlib import Path

from otel_delivery import _attributes as A

ROOT = Path(__file__).resolve().parent.parent
README_PATH = ROOT / "README.md"
README = README_PATH.read_text()
DOCS = ROOT / "docs"
README_MAX_LINES = 200

# Every Markdown page whose relative links must resolve.
PAGES = [README_PATH, *sorted(DOCS.glob("*.md")), ROOT / "tests" / "bench" / "RESULTS.md"]


def _constants(prefix: str = "") -> dict[str, str]:
    return {
        name: value
        for name, value in vars(A).items()
        if name.isupper() and isinstance(value, str) and name.startswith(prefix)
    }


def _section(text: str, heading: str) -> str:
    """The body under ``heading`` (a whole heading line), up to the next heading at its level
    or above."""
    _, found, body = text.partition(f"\n{heading}\n")
    assert found, f"no {heading!r}"
    level = len(heading.split(" ", 1)[0])
    return re.split(rf"^#{{1,{level}}} ", body, maxsplit=1, flags=re.M)[0]


# -- the two commands and the page's length ----------------------------------------------------


def test_the_two_commands_are_the_ones_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", README, flags=re.S)
    demo, tests = blocks[0].strip(), blocks[1].strip()
    assert demo == "pip install -e . && otel-delivery demo"
    assert tests == "pip install -e '.[test]' && pytest"
    assert tests in ci.splitlines()
    assert "otel-delivery demo" in ci


def test_the_readme_is_a_short_page() -> None:
    lines = README.splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it to {README_MAX_LINES} and move "
        "reference material to docs/"
    )


# -- content checked against the code, where it lives -------------------------------------------


def test_every_span_attribute_is_in_the_attribute_table() -> None:
    page = (DOCS / "attributes.md").read_text()
    table = "\n".join(line for line in page.splitlines() if line.startswith("| `"))
    documented = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", table))
    emitted = {
        value
        for name, value in _constants().items()
        if "." in value and not name.startswith(("CARRIER_", "KIND"))
    } | {A.KIND}
    assert emitted - documented == set(), "attributes missing from docs/attributes.md's table"
    ours = {d for d in documented if d.startswith("otel_delivery.")}
    assert ours - emitted == set(), "docs/attributes.md documents unknown ones"


def test_every_carrier_key_is_documented() -> None:
    page = (DOCS / "instrumenting.md").read_text()
    section = _section(page, "## Across tasks and queues: `carrier=`")
    for value in _constants("CARRIER_").values():
        assert f"`{value}`" in section, value


# -- links ---------------------------------------------------------------------------------------

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!\\)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """Text outside fenced code blocks."""
    return FENCE.sub("", text)


def github_slug(heading: str, seen: dict[str, int]) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    return slug if n == 0 else f"{slug}-{n}"


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    return {
        github_slug(m.group(1), seen)
        for m in re.finditer(r"^#{1,6} +(.+?) *#*$", _prose(text), flags=re.M)
    }


def links(text: str) -> list[str]:
    return LINK.findall(INLINE_CODE.sub("", _prose(text)))


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """Relative links in ``page`` whose file, or heading, does not exist."""
    text = page.read_text() if text is None else text
    broken = []
    for target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.is_relative_to(ROOT) or not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md":
            dest_text = text if dest == page else dest.read_text()
            if anchor not in anchors(dest_text):
                broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
        elif anchor:
            broken.append(f"{target}: an anchor into a file that is not Markdown")
    return broken


def test_the_link_checker_finds_broken_links() -> None:
    page = DOCS / "store.md"
    text = (
        "# Title\n\n## A `code()` heading: here\n\n"
        "[ok](#a-code-heading-here) [ok](../README.md#ten-lines-in-your-gateway) "
        "[ok](https://example.com/x) `[not a link](nowhere.md)`\n"
        "[bad](nowhere.md) [bad](#no-such-heading) [bad](../README.md#no-such-heading)\n"
        "```\n[inside code](nowhere.md)\n```\n"
    )
    assert broken_links(page, text) == [
        "nowhere.md: no such file",
        "#no-such-heading: no heading #no-such-heading in docs/store.md",
        "../README.md#no-such-heading: no heading #no-such-heading in README.md",
    ]


def test_every_relative_link_leads_somewhere() -> None:
    assert DOCS.is_dir() and len(PAGES) > 2
    broken = {
        str(page.relative_to(ROOT)): bad for page in PAGES if (bad := broken_links(page))
    }
    assert broken == {}


def test_the_readme_links_every_docs_page() -> None:
    linked = {
        (ROOT / target.partition("#")[0]).resolve() for target in links(README)
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)
    }
    orphans = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert orphans == [], "docs pages the README does not link to"
