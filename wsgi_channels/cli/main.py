"""The ``wsgi-channels`` command: one console script, one subcommand per job.

Each subcommand has a module in this package (``worker``, ``sidecar``,
``runserver``, ``tools``) that translates flags and ``WSGI_CHANNELS_*``
variables into the server's own config and runs it; that module provides
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed arguments and returning an exit status.

Servers that use gevent (``sidecar``, ``runserver``, ``worker --greenlets``)
are monkey-patched here, first thing, before anything else is imported: the
library itself never patches.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from typing import Any, Optional, Sequence

from ..exitcodes import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

__all__ = ["main", "build_parser", "setup_logging", "COMMANDS"]

#: subcommand -> module providing ``register(subparsers)``.
COMMANDS = {
    "worker": "wsgi_channels.cli.worker",
    "sidecar": "wsgi_channels.cli.sidecar",
    "runserver": "wsgi_channels.cli.runserver",
    "send": "wsgi_channels.cli.tools",
    "group-send": "wsgi_channels.cli.tools",
    "stats": "wsgi_channels.cli.tools",
}
_GEVENT_COMMANDS = {"sidecar", "runserver"}


def _needs_gevent(argv: list[str]) -> bool:
    command = next((a for a in argv if not a.startswith("-")), None)
    return command in _GEVENT_COMMANDS or (command == "worker" and any(a.startswith("--greenlets") for a in argv))


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that reports an unknown option itself, with its own usage.

    argparse hands a subcommand's unrecognized arguments back to the top-level parser, whose
    error shows the top-level usage (``wsgi-channels [-h] [--version] COMMAND ...``): no help
    for ``wsgi-channels sidecar --bnd``. Here the subcommand's usage names its options.
    """

    # typeshed overloads this method on the namespace's type; one signature covering them all is
    # what argparse has, and what mypy cannot match against the overloads.
    def parse_known_args(self, args: Optional[Sequence[str]] = None,  # type: ignore[override]
                         namespace: Any = None) -> tuple[Any, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsgi-channels",
        description="Real-time messaging for WSGI apps: workers, the WebSocket sidecar and tools.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"wsgi_channels {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    subparsers.required = True
    for module_name in dict.fromkeys(COMMANDS.values()):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if not (module_name == e.name or module_name.startswith(f"{e.name}.")):
                raise
            continue  # a subcommand not built yet
        module.register(subparsers)
    return parser


def setup_logging(level: str = "info") -> None:
    """Logging for our servers only (the library never configures logging)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _needs_gevent(argv):
        from gevent import monkey

        monkey.patch_all()
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..config import env_errors

    for message in env_errors(args):  # only the options of the subcommand that runs
        print(f"wsgi-channels {args.command}: {message}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(getattr(args, "log_level", None) or "info")
    from ..exceptions import ConfigurationError, LayerUnavailable, StoreError

    # A last line of defence: our own clear errors (and a port already taken) that a subcommand
    # did not catch become one line on stderr and an exit status, never a traceback.
    try:
        return int(args.func(args) or EXIT_OK)
    except (ConfigurationError, StoreError) as e:
        print(f"wsgi-channels {args.command}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except LayerUnavailable as e:
        print(f"wsgi-channels {args.command}: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:  # Ctrl+C before a server installed its own handler (still starting up)
        print(f"wsgi-channels {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            print(f"wsgi-channels {args.command}: cannot listen: {e}", file=sys.stderr)
        elif e.filename:  # a log file, socket path or store that cannot be opened: the message names it
            print(f"wsgi-channels {args.command}: {e}", file=sys.stderr)
        elif e.errno == errno.EACCES:
            print(f"wsgi-channels {args.command}: cannot listen: {e}", file=sys.stderr)
        else:
            raise
        return EXIT_CONFIG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
