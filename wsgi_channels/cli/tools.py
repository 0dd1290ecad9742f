"""Small operator commands: ``send``, ``group-send`` and ``stats``.

::

    wsgi-channels send chat.lobby '{"text": "hello"}' --layer redis://localhost:6379/0
    wsgi-channels group-send liveblog '{"text": "{\\"title\\": \\"hi\\"}"}'
    wsgi-channels stats http.request websocket.connect

Messages are given as JSON objects; a string value prefixed with ``b64:`` is
sent as bytes (``{"bytes": "b64:AAE="}``), since JSON has no bytes type.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any, Callable

from ..channel import Channel, Group, default_layer_url
from ..config import add_option
from ..exceptions import ChannelsError, ConfigurationError, LayerUnavailable, StoreError
from ..exitcodes import EXIT_CONFIG, EXIT_UNAVAILABLE, EXIT_USAGE
from ..layers import from_url, require_cross_process
from .layer_options import add_layer_feature_options, layer_url_with_features

__all__ = ["register", "parse_json_message"]


def _bytes_from_b64(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("b64:"):
        return base64.b64decode(value[4:], validate=True)
    if isinstance(value, list):
        return [_bytes_from_b64(v) for v in value]
    if isinstance(value, dict):
        return {k: _bytes_from_b64(v) for k, v in value.items()}
    return value


def parse_json_message(text: str) -> dict:
    """A message from a JSON object on the command line (``b64:`` strings become bytes); ``-`` reads stdin."""
    if text == "-":  # a message too long for one command-line argument, or piped from a script
        text = sys.stdin.read()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"message is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("message must be a JSON object, e.g. '{\"text\": \"hi\"}'")
    try:
        return _bytes_from_b64(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"bad b64: value in message: {e}") from None


def _with_layer(args: argparse.Namespace, action: Callable[[Any], None]) -> int:
    """Run ``action(layer)`` on the ``--layer`` layer; library errors become one line on stderr."""
    layer = None
    url = layer_url_with_features(args.layer or default_layer_url(), args)
    try:
        require_cross_process(url, f"wsgi-channels {args.command}")
        layer = from_url(url)
        action(layer)
    except ChannelsError as e:
        print(f"wsgi-channels {args.command}: {e}", file=sys.stderr)
        if isinstance(e, (ConfigurationError, StoreError)):  # bad URL, unusable ipc:// file
            return EXIT_CONFIG
        return EXIT_UNAVAILABLE if isinstance(e, LayerUnavailable) else 1
    finally:
        if layer is not None:
            layer.close()
    return 0


def _send(args: argparse.Namespace) -> int:
    try:  # names are checked before any connection is made
        target = Channel(args.name) if args.command == "send" else Group(args.name)
    except ChannelsError as e:
        print(f"wsgi-channels {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE

    def action(layer: Any) -> None:
        type(target)(target.name, layer=layer).send(args.message)

    return _with_layer(args, action)


def _stats(args: argparse.Namespace) -> int:
    def action(layer: Any) -> None:
        out: dict[str, Any] = {"global": layer.global_statistics()}
        for name in args.channels:
            out[name] = layer.channel_statistics(name)
        json.dump(out, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")

    return _with_layer(args, action)


_LAYER_HELP = "channel layer URL (default: ipc://, this user's store on this machine)"


def register(subparsers: Any) -> None:
    for command, what in (("send", "channel"), ("group-send", "group")):
        p = subparsers.add_parser(command, help=f"send one JSON message to a {what}",
                                  description=f"Send one message (a JSON object) to a {what}.")
        p.add_argument("name", help=f"{what} name")
        p.add_argument("message", type=parse_json_message,
                       help='JSON object, e.g. \'{"text": "hi"}\', or - to read it from stdin')
        add_option(p, "--layer", default="", help=_LAYER_HELP)
        add_layer_feature_options(p)
        p.set_defaults(func=_send)
    p = subparsers.add_parser("stats", help="print layer statistics as JSON")
    p.add_argument("channels", nargs="*", help="channels to report on besides the global figures")
    add_option(p, "--layer", default="", help=_LAYER_HELP)
    add_layer_feature_options(p)
    p.set_defaults(func=_stats)
