"""Command-line parsing shared by ``mwm.train`` and ``mwm.probe``.

Named flags cover what people type most; every config key is also a flag in dotted
form, ``--rssm.deter 600`` or ``--rssm.deter=600``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Sequence, Tuple

from mwm.errors import UserError

# flag -> config key
SHORTCUTS = {"steps": "run.steps", "seed": "run.seed", "logdir": "run.logdir", "device": "run.device"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit status 2
        raise UserError(f"{message} (see --help)")


def make_parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=description, epilog=epilog,
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


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> Tuple[argparse.Namespace, List[str]]:
    """Named flags plus overrides; named flags become overrides of their config keys."""
    args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    overrides = []
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return args, overrides + split_overrides(rest)


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
    sys.exit(code or 0)
