"""The user documentation: README.md (the front door) and docs/ (the manual).

Every relative link resolves; docs/cli.md names every option the command line has (read from the click
commands themselves, so a new option without documentation fails here); README stays short and free of
project-tracking text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 300

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
ISSUE_NUMBER = re.compile(r"\bissues?\s*#?\d+", re.I)
THIS_WEEK = re.compile(r"\bthis\s+week\b", re.I)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def prose(text: str) -> str:
    """The text a reader sees as prose: fenced blocks and inline code removed (links there are not links)."""
    text = FENCE.sub("", text)
    lines = [line for line in text.splitlines() if not line.startswith("    ")]  # indented code blocks
    return INLINE_CODE.sub("", "\n".join(lines))


def relative_links(path: Path) -> list[str]:
    targets = []
    for target in LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if re.match(r"^(https?:|mailto:)", target, re.I) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_the_manual_exists():
    for name in ("README.md", "cli.md", "manifest.md", "contract.md", "security.md", "embedding.md", "models.md",
                 "performance/README.md", "notes/border-fringe.md"):
        assert (DOCS / name).is_file(), name
    for backend in ("onnxruntime", "openvino", "tensorrt", "ncnn", "executorch", "triton"):
        assert (DOCS / "backends" / f"{backend}.md").is_file(), backend


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file(path):
    links = relative_links(path)
    broken = [link for link in links if not (path.parent / link).resolve().is_file()]
    assert not broken, f"{path.relative_to(ROOT)}: links to missing files: {broken}"


def test_the_link_check_sees_links():
    """The checker itself: README links into docs/, and a made-up broken link would be caught."""
    assert any(link.startswith("docs/") for link in relative_links(README))
    sample = "see [a](docs/cli.md#export), ![b](x.png), [c](https://example.org), `[d](not-a-link)`"
    assert LINK.findall(prose(sample)) == ["docs/cli.md#export", "x.png", "https://example.org"]


def cli_options() -> dict[str, list[str]]:
    """Every option string of every command, as click will show it in --help."""
    import click

    from nsr_deploy.cli import main

    options = {"": [opt for param in main.params for opt in (*param.opts, *param.secondary_opts)]}
    for name, command in main.commands.items():
        options[name] = [opt for param in command.params if isinstance(param, click.Option) and not param.hidden
                         for opt in (*param.opts, *param.secondary_opts)
                         if opt not in getattr(param, "quiet_aliases", ())]  # kept working, not shown
    return options


def cli_sections() -> dict[str, str]:
    """docs/cli.md split at its ``## <command>`` headings (text before the first one belongs to the group)."""
    sections, current = {"": []}, ""
    for line in (DOCS / "cli.md").read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^##\s+`?(?:nsr-deploy\s+)?([a-z-]+)`?\s*$", line)
        if heading:
            current = heading.group(1)
            sections.setdefault(current, [])
        sections[current].append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def test_cli_reference_names_every_option():
    options = cli_options()
    sections = cli_sections()
    assert set(options) - {""} <= set(sections), f"commands without a section in docs/cli.md: " \
                                                 f"{sorted(set(options) - {''} - set(sections))}"
    missing = []
    for command, opts in options.items():
        text = sections[command] if command else (DOCS / "cli.md").read_text(encoding="utf-8")
        missing += [f"{command or 'nsr-deploy'} {opt}" for opt in opts
                    if not re.search(rf"`{re.escape(opt)}(?![\w-])", text)]
    assert not missing, f"options --help shows that docs/cli.md does not document: {missing}"


def test_readme_is_short_and_has_no_tracking_text():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    assert not ISSUE_NUMBER.search(text), ISSUE_NUMBER.search(text).group(0)
    assert not THIS_WEEK.search(text), THIS_WEEK.search(text).group(0)


@pytest.mark.parametrize("path", sorted(DOCS.rglob("*.md")), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_have_no_issue_numbers(path):
    found = ISSUE_NUMBER.search(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(ROOT)}: {found.group(0)!r}"


def test_readme_keeps_the_ci_test_command():
    """.ci/run runs the README's test command: the two must stay the same line."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert f"    {command}\n" in README.read_text(encoding="utf-8")
