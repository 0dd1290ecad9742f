"""Shared option handling: every command-line flag is also read from ``WSGI_CHANNELS_<FLAG>``.

Front doors (CLI flags, environment variables, Flask ``app.config``, Pyramid and
Django settings) only translate into keyword arguments of one config object per
server; this module holds the pieces they share.
"""
from __future__ import annotations

import argparse
import importlib
import os
from typing import Any, Callable

from .exceptions import ConfigurationError

__all__ = ["ENV_PREFIX", "env_name", "add_option", "parse_bool", "parse_address", "EnvError", "env_errors",
           "import_object"]

ENV_PREFIX = "WSGI_CHANNELS_"


def env_name(flag: str) -> str:
    """``--ping-interval`` -> ``WSGI_CHANNELS_PING_INTERVAL``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def parse_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def parse_address(value: str) -> tuple[str, Any]:
    """gunicorn's address grammar: ``HOST:PORT``, ``:PORT``, ``[::1]:PORT`` or ``unix:PATH``.

    Returns ``("unix", path)`` or ``(host, port)``.
    """
    if value.startswith("unix:"):
        return "unix", value[5:]
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"address {value!r} is not HOST:PORT or unix:PATH")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class EnvError:
    """The default of an option whose ``WSGI_CHANNELS_*`` value is unusable.

    Reported (by :func:`env_errors`) only when the subcommand that has the option runs and the
    flag is not given: a bad ``WSGI_CHANNELS_PING_INTERVAL`` must not break ``wsgi-channels send``.
    """

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"<EnvError {self.message}>"


def env_errors(args: argparse.Namespace) -> list[str]:
    """Messages of the unusable environment values among the parsed options."""
    return [v.message for v in vars(args).values() if isinstance(v, EnvError)]


class _AppendReplacingDefault(argparse._AppendAction):
    """``action="append"`` whose first use on the command line replaces the default.

    argparse's own append extends the default, so ``WSGI_CHANNELS_BIND=a`` plus ``--bind b``
    would listen on both; an explicit flag must win over the environment.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        seen: set[str] = getattr(namespace, "_wsgi_channels_appended", set())
        if self.dest not in seen:
            setattr(namespace, self.dest, None)
            seen.add(self.dest)
            setattr(namespace, "_wsgi_channels_appended", seen)
        super().__call__(parser, namespace, values, option_string)


def add_option(parser: Any, flag: str, *, default: Any = None,
               type: Callable[[str], Any] | None = None, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument`` whose default comes from ``WSGI_CHANNELS_<FLAG>`` when set.

    An explicit flag on the command line still wins. ``action="store_true"``
    flags read booleans from the environment.
    """
    name = env_name(flag)
    raw = os.environ.get(name)
    action = kwargs.get("action")
    if raw is not None and raw != "":
        try:
            if action in ("store_true", "store_false"):
                default = parse_bool(raw)
            elif action == "append" or kwargs.get("nargs") in ("*", "+"):
                conv = type or str
                default = [conv(v) for v in raw.replace(",", " ").split()]
            else:
                default = type(raw) if type else raw
        except (argparse.ArgumentTypeError, ValueError) as e:
            default = EnvError(f"environment variable {name}={raw!r}: {e}")
    if action == "append":
        kwargs["action"] = _AppendReplacingDefault  # the flags replace the environment's list
    help_text = kwargs.pop("help", "") or ""
    kwargs["help"] = f"{help_text} [env {name}]".strip()
    if type is not None:
        kwargs["type"] = type
    return parser.add_argument(flag, default=default, **kwargs)

def import_object(path: Any) -> Any:
    """Import ``"package.module:attr"`` or ``"package.module.attr"``; other values are returned as they are."""
    if not isinstance(path, str):
        return path
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigurationError(f"{path!r} is not a dotted path such as 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigurationError(f"cannot import {module_name!r} (from {path!r}): {e}") from e
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r} (from {path!r})") from None
    return obj
