"""Citations of the project's documents resolve: the file exists, and so does the § section.

The code cites ``docs/design.md`` and ``docs/kernel-behaviour.md`` by section
(``docs/kernel-behaviour.md §8.1 row c``); sections are headings ``## §N ...`` or
``### §N.M ...``. Checked, in the package, the tests, fuzz, bench, scripts, the README
and docs/:
- every ``docs/NAME.md`` named exists, and so does every markdown link between docs;
- every § right after a document's name (``design.md §2``, ``kernel-behaviour §8.3``,
  ``[kernel-behaviour](docs/kernel-behaviour.md) §4``) is a section of that document;
- a bare § (``§8.3``) in a file that names exactly one sectioned document is a section of
  it (a document's own bare § refer to itself); ``RFC 8200 §4.1`` and the audit's § are not ours.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SCANNED = ["vhost_ipvlan", "tests", "fuzz", "bench", "scripts"]
SUFFIXES = {".py", ".c", ".md", ".toml", ".sh"}

_HEADING = re.compile(r"^#{2,4} §(\d+(?:\.\d+)?)\b", re.MULTILINE)
_SECTION = re.compile(r"§\s?(\d+(?:\.\d+)?)")
#: a document's name, as code and docs write it, then the § it cites
_NAMED = re.compile(
    r"(?:docs/)?(?P<doc>[a-z][\w-]*?)(?:\.md)?[`\])]*(?:\((?:\.\./)?docs/[\w-]+\.md\))?`*"
    r"(?P<refs>(?:\s*(?:,|-|/|and)?\s*§\s?\d+(?:\.\d+)?)+)"
)
_DOC_PATH = re.compile(r"\bdocs/([\w-]+\.md)\b")
_MD_LINK = re.compile(r"\]\(((?:\.\./)?[\w./-]+\.md)(?:#[^)]*)?\)")
_NOT_OURS = re.compile(r"(?:RFC \d+|[Aa]udit(?: finding)?)\s*$")


def sections(doc: str) -> set[str]:
    """The § sections of ``docs/<doc>.md`` (empty if it has none or does not exist)."""
    path = DOCS / f"{doc}.md"
    return set(_HEADING.findall(path.read_text())) if path.is_file() else set()


SECTIONED = {p.stem for p in DOCS.glob("*.md") if sections(p.stem)}


def files() -> list[Path]:
    out = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    for top in SCANNED:
        out += sorted(p for p in (ROOT / top).rglob("*") if p.suffix in SUFFIXES and p.is_file())
    return [p for p in out if p.resolve() != Path(__file__).resolve()]


def test_the_sectioned_documents_exist() -> None:
    assert {"design", "kernel-behaviour"} <= SECTIONED


def citations(text: str, own: str | None) -> list[tuple[str, str]]:
    """``(document, section)`` for every § in ``text`` that is ours; ``own`` is the
    document a bare § means (None: bare ones are not checked)."""
    out: list[tuple[str, str]] = []
    named_spans: list[tuple[int, int]] = []
    for m in _NAMED.finditer(text):
        if m["doc"] in SECTIONED:
            out += [(m["doc"], s) for s in _SECTION.findall(m["refs"])]
            named_spans.append(m.span("refs"))
    if own is None:
        return out
    for m in _SECTION.finditer(text):
        if any(a <= m.start() < b for a, b in named_spans) or _NOT_OURS.search(text[max(0, m.start() - 24):m.start()]):
            continue
        out.append((own, m[1]))
    return out


def own_document(path: Path, text: str) -> str | None:
    if path.parent == DOCS and path.stem in SECTIONED:
        return path.stem
    named = {d for d in SECTIONED if re.search(rf"\b{re.escape(d)}(?:\.md|\]|`| §)", text)}
    return named.pop() if len(named) == 1 else None


@pytest.mark.parametrize("path", files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_documents_and_sections_exist(path: Path) -> None:
    text = path.read_text(errors="replace")
    missing = sorted({name for name in _DOC_PATH.findall(text) if not (DOCS / name).is_file()})
    assert not missing, f"{path.relative_to(ROOT)} cites docs/{', docs/'.join(missing)}, which do not exist"
    if path.suffix == ".md":
        base = path.parent
        broken = sorted({link for link in _MD_LINK.findall(text) if not (base / link).resolve().is_file()})
        assert not broken, f"{path.relative_to(ROOT)} links to {broken}, which do not exist"
    bad = sorted({f"{doc}.md §{sec}" for doc, sec in citations(text, own_document(path, text))
                  if sec not in sections(doc)})
    assert not bad, f"{path.relative_to(ROOT)} cites sections that do not exist: {', '.join(bad)}"


def test_the_checker_catches_a_section_that_does_not_exist() -> None:
    text = "see docs/kernel-behaviour.md §3, §99 and ``design.md`` §42; [kernel-behaviour](kernel-behaviour.md) §77"
    bad = {c for c in citations(text, None) if c[1] not in sections(c[0])}
    assert bad == {("kernel-behaviour", "99"), ("design", "42"), ("kernel-behaviour", "77")}


def test_bare_sections_mean_the_one_document_a_file_names() -> None:
    text = "docs/kernel-behaviour.md §4: ... RFC 8200 §4.1, audit §9, then §8.3 and §12.1 row a"
    assert own_document(Path("x.py"), text) == "kernel-behaviour"
    assert sorted(citations(text, "kernel-behaviour")) == [
        ("kernel-behaviour", "12.1"), ("kernel-behaviour", "4"), ("kernel-behaviour", "8.3")]


#: documents that are not in the repository (the project's founding notes beside a checkout)
_OUTSIDE = re.compile(
    r"DESIGN\.md|ENVIRONMENT\.md|\.\./shared/|\breference/|\b[Rr]eference §|§\d+(?:\.\d+)? of the reference"
)


@pytest.mark.parametrize("path", files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_cites_documents_outside_the_repository(path: Path) -> None:
    text = path.read_text(errors="replace")
    found = sorted({m[0] for m in _OUTSIDE.finditer(text)})
    assert not found, f"{path.relative_to(ROOT)} cites {found}: cite docs/design.md or docs/kernel-behaviour.md"
