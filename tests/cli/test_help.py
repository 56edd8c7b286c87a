"""``--help`` a user can act on: every command says what it does, every option with a default says it."""

from __future__ import annotations

import argparse

from diffcut_edge.cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: str = "diffcut-edge"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{path} {name}")


def _leaves():
    return [
        (path, p)
        for path, p in _commands(build_parser())
        if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
    ]


def test_every_command_has_a_description():
    missing = [path for path, parser in _leaves() if not (parser.description or "").strip()]
    assert missing == []


def test_every_option_with_a_default_names_it_in_its_help():
    flags_only = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction, argparse._VersionAction)
    missing = []
    for path, parser in _leaves():
        for action in parser._actions:
            if (
                isinstance(action, flags_only)
                or action.default in (None, argparse.SUPPRESS)
                or not action.option_strings
            ):
                continue
            if "default" not in (action.help or "").lower():
                missing.append(f"{path} {action.option_strings[-1]} (default {action.default!r})")
    assert missing == []


def test_every_option_and_argument_has_help():
    missing = [
        f"{path} {a.option_strings[-1] if a.option_strings else a.dest}"
        for path, parser in _leaves()
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()
    ]
    assert missing == []
