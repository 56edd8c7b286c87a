"""Every ``diffcut-edge <verb> --flag`` written in README.md and docs/*.md exists in the CLI parser.

Commands are taken from fenced code blocks and inline code spans; a command starts a
line (after an optional ``$`` prompt or VAR=value assignments) or follows ``&&``, ``;``,
``|``, ``(`` or ``time``. Continuation backslashes are joined; ``# comments`` are ignored.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from diffcut_edge.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([*ROOT.glob("README.md"), *(ROOT / "docs").glob("*.md")])
_COMMAND = re.compile(r"(?:^|&&|;|\||\(|\btime\b)\s*(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S+\s+)*diffcut-edge\s+(.*)")


def command_lines(text: str) -> list[str]:
    """The argument strings of every diffcut-edge command in a markdown text."""
    snippets = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    snippets += re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))
    found = []
    for snippet in snippets:
        for line in re.sub(r"\\\n\s*", " ", snippet).splitlines():
            line = re.split(r"\s#", line, maxsplit=1)[0]
            for match in _COMMAND.finditer(line):
                found.append(" ".join(re.split(r"&&|;", match.group(1))[0].split()))
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_command(parser: argparse.ArgumentParser, args: str) -> list[str]:
    """Problems with one command's verb and flags (empty when it matches the parser)."""
    tokens = [t.strip("[]()'\"`,") for t in args.split()]
    tokens = [t for t in tokens if t]
    problems, current, path = [], parser, ["diffcut-edge"]
    for token in tokens:
        if token.startswith("--") and len(token) > 2:
            # "--refine/--no-refine" in a synopsis names two alternatives
            for flag in token.split("=", 1)[0].split("/"):
                if flag not in current._option_string_actions:
                    problems.append(f"{' '.join(path)}: unknown option {flag}")
            continue
        subs = _subparsers(current)
        if subs and not token.startswith("-"):
            if token not in subs:
                problems.append(f"{' '.join(path)}: unknown command {token!r}")
                return problems
            current, path = subs[token], [*path, token]
    if _subparsers(current):
        problems.append(f"{' '.join(path)}: needs a sub-command")
    return problems


def test_the_checker_catches_unknown_verbs_and_flags():
    parser = build_parser()
    assert check_command(parser, "segment a.jpg --model-dir M --out O --no-refine") == []
    assert check_command(parser, "video a b --model-dir M [--refine/--no-refine]") == []
    assert check_command(parser, "segment a.jpg --model-dir M --frobnicate 3")[0].endswith("--frobnicate")
    assert "unknown command 'segmant'" in check_command(parser, "segmant x")[0]
    text = (
        "```bash\n$ diffcut-edge video in.mp4 out.mp4 \\\n    --model-dir M --every 2  # note --fake\n```\n"
        "pip install diffcut-edge and `diffcut-edge webcam --headless`"
    )
    assert command_lines(text) == ["video in.mp4 out.mp4 --model-dir M --every 2", "webcam --headless"]


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_documented_command_exists(doc):
    parser = build_parser()
    commands = command_lines(doc.read_text(encoding="utf-8"))
    problems = [f"{doc.name}: `diffcut-edge {c}`: {p}" for c in commands for p in check_command(parser, c)]
    assert not problems, "\n".join(problems)


def test_the_application_docs_are_checked():
    names = {d.name for d in DOCS}
    assert {"cli.md", "python-api.md", "jetson.md"} <= names
    verbs = {c.split()[0] for d in DOCS for c in command_lines(d.read_text(encoding="utf-8"))}
    assert {"segment", "video", "webcam", "export", "build-engine"} <= verbs


_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# A path written in the text: from the repository root (docs/, tests/, ...), or inside the package
# (runtime/ncut.py), or a sibling doc (cli.md). Outside the repository (../shared) is not a reference a
# user can follow.
_PATH = re.compile(
    r"(?<![\w/.:@-])((?:docs|benchmarks|examples|tests|shared|\.ci|diffcut_edge|runtime|apps|export|eval|"
    r"serve|models|cli|diffcut_ref)/[\w./*-]*[\w*/]|[\w-]+\.md\b)"
)


def _exists(doc: Path, target: str) -> bool:
    if "*" in target or "<" in target:
        return True  # a pattern, not a file
    module = target.rsplit(".", 1)[0] if "." in target.rsplit("/", 1)[-1] else target  # runtime/xp.Extras
    names = {target, f"{target}.py", f"{module}.py"}
    return any((base / name).exists() for base in (ROOT, doc.parent, ROOT / "diffcut_edge") for name in names)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_file_a_doc_points_to_exists(doc):
    """Markdown links and paths in the text name files of this repository that exist."""
    text = doc.read_text(encoding="utf-8")
    targets = [t for t in _LINK.findall(text) if not re.match(r"[a-z]+:", t)]
    prose = re.sub(r"https?://\S+", "", re.sub(r"```.*?```", "", text, flags=re.S))
    targets += _PATH.findall(prose)
    missing = sorted({t for t in targets if not _exists(doc, t)})
    assert missing == [], f"{doc.relative_to(ROOT)} points to files that do not exist"
