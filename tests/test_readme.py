"""The README is a front page: short, and every relative link in it leads somewhere real."""

import re
import sys
from typing import List, Tuple

import pytest
from conftest import REPO

README = REPO / "README.md"
MAX_CHARS = 12_000

_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    """The text without code blocks and code spans (their brackets are code, not links)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's and Python-Markdown's anchor of a heading (lower case, punctuation dropped, spaces to '-')."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return re.sub(r"\s", "-", text.strip())


def anchors(markdown: str) -> List[str]:
    """The anchors of a Markdown file's headings."""
    return [_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", _FENCE.sub("", markdown), re.M)]


def relative_links(markdown: str) -> List[Tuple[str, str]]:
    """``(path, anchor)`` of every link and image that is not a URL (``path`` empty for ``#anchor``)."""
    found = []
    for match in _LINK.finditer(_prose(markdown)):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        found.append((path, anchor))
    return found


def test_readme_is_a_front_page():
    size = len(README.read_text(encoding="utf-8"))
    assert size <= MAX_CHARS, f"README.md has {size} characters, more than {MAX_CHARS}: move detail to docs/"


def test_readme_links_resolve():
    links = relative_links(README.read_text(encoding="utf-8"))
    assert len(links) >= 10, links  # the front page links to the documentation pages
    for path, anchor in links:
        target = (README.parent / path).resolve() if path else README
        assert target.exists(), f"README.md links to {path!r}, which does not exist"
        if target.is_file() and target.suffix == ".md":
            if anchor:
                assert anchor in anchors(target.read_text(encoding="utf-8")), f"README.md links to {path}#{anchor}: no such heading"
        else:
            assert not anchor, f"README.md links to an anchor of {path!r}, which is not a Markdown file"


def test_readme_test_command_is_what_ci_runs():
    """`.ci/run` runs exactly the README's test command."""
    readme = README.read_text(encoding="utf-8")
    block = re.search(r"Install and run the tests.*?```bash\n(.+?)\n```", readme, re.S)
    assert block, "README.md lost its test command"
    ci_lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert block.group(1) in ci_lines


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("[a](docs/cli.md) and ![b](docs/x.png)", [("docs/cli.md", ""), ("docs/x.png", "")]),
        ("[a](docs/cli.md#pictures) [b](#two-commands) [c](https://example.org/x.md)", [("docs/cli.md", "pictures"), ("", "two-commands")]),
        ("`[not](a-link.md)`\n```\n[nor](this.md)\n```\n[yes](y.md)", [("y.md", "")]),
    ],
)
def test_relative_links_are_found(markdown, expected):
    assert relative_links(markdown) == expected


def test_anchor_of_a_heading():
    assert anchors("# Serve: `lightning-ad serve`\n## Python, without a Trainer\n```\n# not a heading\n```") == [
        "serve-lightning-ad-serve", "python-without-a-trainer"]


def test_a_missing_file_fails(tmp_path, monkeypatch):
    """The link check can fail: a link to a file that is not there."""
    fake = tmp_path / "README.md"
    fake.write_text("[gone](docs/gone.md)\n" * 10, encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "README", fake)
    with pytest.raises(AssertionError, match="does not exist"):
        test_readme_links_resolve()
