"""Griffe extension for the documentation site: the package's reST inline markup, read as Markdown.

The docstrings are Google style with reStructuredText inline markup (``code``,
:class:`~lightning_ad.inference.detector.Detector`, ``text::`` before a literal block). mkdocstrings
renders docstrings as Markdown, so this extension rewrites each docstring's text (for the
site only; the package and its ``__doc__`` are untouched) once the package is loaded:

- double-backquoted literals become Markdown code spans;
- a role (``:class:``, ``:func:``, ``:meth:``, ``:mod:``, ``:data:``, ``:attr:``, ``:exc:``,
  ``:obj:``) whose target is a documented object of the package becomes a cross-reference
  (autorefs then fails a strict build if that object is not rendered on any page); a
  target outside the package (``torchmetrics.Metric``), private, or without a docstring
  becomes a code span; a target that names nothing in the package is reported as a warning,
  which fails a strict build;
- a paragraph ending in ``::`` ends in ``:`` (its indented block is a code block in Markdown too);
- a doctest paragraph is fenced as a ``pycon`` code block, so that its lines are not read as
  Markdown (``>>>`` would be a quotation); griffe reads ``Example:`` as an admonition, whose
  content is Markdown too.

Used by ``mkdocs.yml`` (``extensions: [docs/griffe_rst.py]``); nothing in the package imports it.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Optional

import griffe

_LOGGER = griffe.get_logger("griffe_rst")

_LITERAL = re.compile(r"``(?=\S)(.+?)(?<=\S)``")
_ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|data|attr|exc|obj):`([^`]+)`")
_TITLED = re.compile(r"^(.*?)\s*<([^<>]+)>$")
_LITERAL_BLOCK = re.compile(r"(?m)(\S)::$")
_LONE_LITERAL_MARK = re.compile(r"(?m)^(\s*)::$")
_SECTION_TITLE = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")
_ROOT = "lightning_ad"


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if member.is_alias:
            continue
        yield from _objects(member)


def _lookup(root: griffe.Module, path: str) -> Optional[griffe.Object]:
    """The object at the dotted ``path`` (absolute, from the package root), aliases followed."""
    if path == root.path:
        return root
    if not path.startswith(root.path + "."):
        return None
    try:
        found = root[path[len(root.path) + 1:]]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    try:
        return found.final_target if found.is_alias else found
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _resolve(root: griffe.Module, scope: griffe.Object, target: str) -> Optional[griffe.Object]:
    """The object that ``target`` names as seen from ``scope`` (Sphinx's rules, roughly)."""
    found = _lookup(root, target)
    if found is not None:
        return found
    head, _, rest = target.partition(".")
    try:
        base = scope.resolve(head)
    except griffe.NameResolutionError:
        base = None
    if base is not None:
        found = _lookup(root, base + ("." + rest if rest else ""))
        if found is not None:
            return found
    # :meth:`level` in a method's docstring names a method of the same class
    for outer in (scope.parent, getattr(scope.parent, "parent", None)):
        if outer is not None:
            found = _lookup(root, f"{outer.path}.{target}")
            if found is not None:
                return found
    return None


def _fence_doctests(text: str) -> str:
    """Doctest paragraphs (from a ``>>>`` line to the next blank line), fenced."""
    out = []
    fence_indent = None  # indentation of the open fence
    for line in text.split("\n"):
        stripped = line.strip()
        if fence_indent is not None and not stripped:
            out.append(" " * fence_indent + "```")
            fence_indent = None
        if fence_indent is None and stripped.startswith(">>>"):
            fence_indent = len(line) - len(line.lstrip())
            if out and out[-1].strip() and not _SECTION_TITLE.match(out[-1]):
                out.append("")  # a fence does not interrupt a paragraph; a section title (Example:) is no paragraph
            out.append(" " * fence_indent + "```pycon")
        out.append(line)
    if fence_indent is not None:
        out.append(" " * fence_indent + "```")
    return "\n".join(out)


def _is_documented(obj: griffe.Object) -> bool:
    """Rendered by the API pages: public at every level, and a module, a class or a docstring."""
    if any(part.startswith("_") and not part.startswith("__") for part in obj.path.split(".")):
        return False
    return obj.is_module or obj.is_class or bool(obj.docstring)


class RstInline(griffe.Extension):
    """Rewrites reST inline markup in every docstring of the package into Markdown."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.path != _ROOT:
            return
        for obj in _objects(pkg):
            if obj.docstring is not None:
                text = self._convert(pkg, obj, obj.docstring.value)
                if text != obj.docstring.value:
                    obj.docstring.value = text
                    obj.docstring.__dict__.pop("parsed", None)

    def _convert(self, root: griffe.Module, scope: griffe.Object, text: str) -> str:
        def role(match: "re.Match[str]") -> str:
            kind, body = match.groups()
            titled = _TITLED.match(body)
            title, target = (titled.group(1), titled.group(2)) if titled else (None, body)
            short = target.startswith("~")
            target = target.lstrip("~.")
            if title is None:
                title = target.rsplit(".", 1)[-1] if short else target
            found = _resolve(root, scope, target)
            if found is None:
                if target.split(".")[0] == _ROOT:
                    _LOGGER.warning("%s: :%s:`%s` names nothing in the package", scope.path, kind, target)
                return f"`{title}`"
            if not _is_documented(found):
                return f"`{title}`"
            return f"[`{title}`][{found.path}]"

        text = _fence_doctests(text)
        text = _ROLE.sub(role, text)
        text = _LITERAL.sub(lambda m: "`" + m.group(1) + "`", text)
        text = _LONE_LITERAL_MARK.sub(r"\1", text)
        return _LITERAL_BLOCK.sub(r"\1:", text)
