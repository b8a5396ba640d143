"""Command-line parsing shared by ``mwm.train`` and ``mwm.probe``.

Named flags cover what people type most; every config key is also a flag in dotted
form, ``--rssm.deter 600`` or ``--rssm.deter=600``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, List, Sequence, Tuple

from mwm.errors import UserError

# flag -> config key
SHORTCUTS = {"steps": "run.steps", "seed": "run.seed", "logdir": "run.logdir", "device": "run.device"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit status 2
        raise UserError(f"{message} (see --help)")


def make_parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=description, epilog=epilog, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, help="env name: atari_<game>, dmc_<domain>_<task> or toy_catch")
    parser.add_argument("--preset", default="default", help="network sizes: tiny (tests), small (CPU), default (paper, GPU)")
    parser.add_argument("--logdir", help="run directory (default runs/<env>-<agent>-seed<seed>)")
    parser.add_argument("--seed", help="one seed for torch, numpy and the envs (default 0)")
    parser.add_argument("--device", help="auto (default: cuda if present), cpu, cuda, cuda:N")
    return parser


def split_overrides(rest: Sequence[str]) -> List[str]:
    """Turn leftover ``--a.b value`` / ``--a.b=value`` tokens into ``a.b=value`` strings."""
    out, i = [], 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--") or "." not in token.split("=", 1)[0]:
            raise UserError(f"unknown argument '{token}': flags are --env, --preset, ... or dotted config "
                            "keys like --rssm.deter 600 (see --help)")
        if "=" in token:
            out.append(token[2:])
            i += 1
        elif i + 1 < len(rest) and not (rest[i + 1].startswith("--") and len(rest[i + 1]) > 2):
            out.append(f"{token[2:]}={rest[i + 1]}")
            i += 2
        else:
            raise UserError(f"flag '{token}' needs a value (e.g. {token} 600)")
    return out


# Config keys that a named flag sets and that choose the config blocks themselves: never dotted.
NAMED_ONLY = {"run.env": "--env", "run.agent": "--agent", "run.preset": "--preset", "probe.method": "--method"}


def _named_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> dict:
    """flag -> every value given for each named flag that takes a value, in order."""
    flags = {option for action in parser._actions if action.nargs is None and action.option_strings
             for option in action.option_strings if option.startswith("--")}
    found: dict = {}
    for i, token in enumerate(argv):
        name, sep, value = token.partition("=")
        if name in flags:
            if not sep:
                value = argv[i + 1] if i + 1 < len(argv) else None
            found.setdefault(name, []).append(value)
    return found


def _check_once(parser: argparse.ArgumentParser, argv: Sequence[str], overrides: Sequence[str]) -> None:
    """Refuse a setting given twice with different values (one would silently win)."""
    for flag, values in _named_values(parser, argv).items():
        if len(set(values)) > 1:
            raise UserError(f"{flag} is given {len(values)} times ({', '.join(map(str, values))}): pass it once")
    seen: dict = {}
    named = {key: f"--{flag}" for flag, key in SHORTCUTS.items()}
    for i, item in enumerate(overrides):
        key, _, value = item.partition("=")
        if key in NAMED_ONLY:
            raise UserError(f"--{key} cannot be set as a config key (it chooses the config blocks): "
                            f"use {NAMED_ONLY[key]} instead")
        if key in seen and seen[key] != value:
            flags = {named.get(key, f"--{key}"), f"--{key}"}
            raise UserError(f"{key} is given twice ({seen[key]!r} and {value!r}, by {' and '.join(sorted(flags))}): "
                            "pass it once")
        seen[key] = value


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> Tuple[argparse.Namespace, List[str]]:
    """Named flags plus overrides; named flags become overrides of their config keys.

    A setting given twice with different values (``--env a --env b``, ``--seed 1
    --run.seed 2``) is refused, as is the dotted form of a key that a named flag owns
    (``--run.env``: use ``--env``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    overrides += split_overrides(rest)
    _check_once(parser, argv, overrides)
    return args, overrides


def run_main(main: Callable[[], int]) -> None:
    """Run an entry point: a UserError becomes one line on stderr and exit status 2; an
    interrupt that the entry point did not handle (a second Ctrl-C) one line and status 130."""
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: stopped at once, without a final checkpoint (the last one is kept)", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # stdout's reader went away (``--print-config | head``): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush must not fail again
        sys.exit(1)
    sys.exit(code or 0)
