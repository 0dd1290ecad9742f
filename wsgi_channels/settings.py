"""What every front door agrees on: which layer a process uses, and an app's settings.

Front doors (the ``wsgi-channels`` commands and their ``WSGI_CHANNELS_*``
variables, Flask ``app.config``, Pyramid settings, Django ``settings.WSGI_CHANNELS``)
only translate their own names into the values here; the checks, the defaults and
the way options travel are written once.

**Which layer.** When several are named, the first of these wins:

1. an explicit ``--layer`` flag of a command;
2. the app's own setting (Flask ``WSGI_CHANNELS_LAYER`` in ``app.config``, Pyramid
   ``wsgi_channels.layer``, Django ``WSGI_CHANNELS[alias]["LAYER"]``), which
   ``routing_for(app)`` carries to ``wsgi-channels worker``, so the worker serves
   the layer the app pushes to;
3. the ``WSGI_CHANNELS_LAYER`` environment variable;
4. the default: ``ipc://``, the single-machine store of the current user
   (``<tmp>/wsgi_channels-<uid>/channels.db``), which every process of that user on
   the machine finds without a setting: gunicorn's workers, the sidecar, the
   worker and the commands. Which store it is gets logged once per process.

``memory://`` (one process only) is what ``wsgi-channels runserver`` and the test
client (:mod:`wsgi_channels.testing`) use when nothing else is named, and what a
process that names it explicitly gets.

**An app's settings** (:class:`AppSettings`): the layer URL with the layer options
folded into its query (so :func:`~wsgi_channels.get_layer`, one layer per URL per
process, applies them in every process that reads the URL), the extra routing,
the origins allowed to open WebSockets, the sidecar's public URL, the connect
token secret and the presence view's authorisation. A bad value raises
:class:`~wsgi_channels.ConfigurationError` naming the framework's own setting.

**Group history and presence** (``group_history``/``group_presence``) are layer
options like ``capacity``, in one grammar everywhere (:mod:`wsgi_channels.layers.features`):
``PATTERN[:FIELD=VALUE]...`` items, repeatable. Every process that publishes to or
adds members to such a group must have the same patterns, so the one place to set them
is the layer URL that every process reads
(``WSGI_CHANNELS_LAYER=ipc://?group_history=chat.*:size=100``); the adapters' options and
the commands' ``--group-history``/``--group-presence`` flags only add items to that URL
(:func:`with_layer_options`), after its own (the first matching pattern wins).
"""
from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Mapping, NamedTuple, Optional, TypeVar
from urllib.parse import urlencode

from .exceptions import ConfigurationError

__all__ = ["ENV_VAR", "DEFAULT_LAYER_URL", "FEATURE_OPTIONS", "default_layer_url", "set_process_default",
           "command_layer_url", "feature_items", "with_layer_options", "AppSettings", "SettingNames"]

log = logging.getLogger(__name__)

_S = TypeVar("_S", bound="AppSettings")

#: The environment variable naming the default layer.
ENV_VAR = "WSGI_CHANNELS_LAYER"
#: The layer of a process where nothing names one: the current user's single-machine store.
DEFAULT_LAYER_URL = "ipc://"

_process_default: Optional[str] = None  # set_process_default(): what "nothing named" means here
_announced = False
_announce_lock = threading.Lock()


def default_layer_url() -> str:
    """The URL in ``WSGI_CHANNELS_LAYER``; when it is unset or empty, the process's default
    (:func:`set_process_default`), else :data:`DEFAULT_LAYER_URL` (logged once per process)."""
    url = os.environ.get(ENV_VAR, "").strip()
    if url:
        return url
    if _process_default is not None:
        return _process_default
    if not _announced:
        _announce()
    return DEFAULT_LAYER_URL


def _announce() -> None:
    global _announced
    with _announce_lock:
        if _announced:
            return
        _announced = True
    from .layers.ipc.store import default_path

    log.info("no channel layer configured (%s is unset): using %s, the single-machine store %s that every "
             "process of this user on this machine shares; set %s (redis://host:6379/0) to reach other "
             "machines", ENV_VAR, DEFAULT_LAYER_URL, default_path(), ENV_VAR)


def set_process_default(url: Optional[str]) -> None:
    """Make ``url`` what this process uses when ``WSGI_CHANNELS_LAYER`` is unset (None: the built-in
    default again). The test client sets ``memory://``, so consumers it runs push where it reads."""
    global _process_default
    _process_default = url.strip() if url else None


def command_layer_url(flag: Optional[str], app_layer: Optional[str] = None, *, command: str = "") -> str:
    """The layer a command uses: ``flag`` (an explicit ``--layer``) > ``app_layer`` (the app's own
    setting, carried by its routing) > ``WSGI_CHANNELS_LAYER`` > the default. When the environment
    names another layer than the app, the app wins and a warning says so."""
    if flag and flag.strip():
        return flag.strip()
    if app_layer:
        env = os.environ.get(ENV_VAR, "").strip()
        # The app's layer is often the environment's with the app's options added: nothing to say then.
        if env and env != app_layer and not (app_layer.startswith(env) and app_layer[len(env)] in "?&"):
            log.warning("%s%s=%r is not used: the app's own setting names the layer %r, where the app pushes "
                        "(give --layer to choose another)", f"{command}: " if command else "", ENV_VAR, env,
                        app_layer)
        return app_layer
    return default_layer_url()


#: Layer options whose value is a list of ``PATTERN[:FIELD=VALUE]...`` items (repeated in a URL query).
FEATURE_OPTIONS = ("group_history", "group_presence")

# A comma starts another URL only where a scheme follows (as in layers.layer_class).
_URL_SPLIT = re.compile(r",(?=\s*[A-Za-z][A-Za-z0-9+.\-]*://)")


def feature_items(option: str, spec: Any) -> list[str]:
    """``group_history``/``group_presence`` in any form the layer takes (a mapping of globs to
    fields, a list of pairs, ``PATTERN[:FIELD=VALUE]...`` items in a str or a list) as URL items,
    checked field by field. Raises :class:`ConfigurationError` saying what is wrong (callers add
    the setting's name); a compiled regex cannot travel in a URL and is refused."""
    from .layers.features import format_item, parse_history, parse_presence

    if option not in FEATURE_OPTIONS:
        raise ValueError(f"not a feature option: {option!r}")
    (parse_history if option == "group_history" else parse_presence)(spec)
    if spec is None:
        return []
    if isinstance(spec, str):
        return spec.split()
    items: list[str] = []
    for item in spec.items() if isinstance(spec, Mapping) else spec:
        if isinstance(item, str):
            items.extend(item.split())
            continue
        pattern, fields = item
        if not isinstance(pattern, str):
            raise ConfigurationError(f"{option}: the pattern {getattr(pattern, 'pattern', pattern)!r} is a compiled "
                                     "regex, which cannot travel in the layer URL to the other processes; write it as "
                                     "a glob ('chat.*')")
        fields = dict(fields) if isinstance(fields, Mapping) else {}
        # 100.0 is accepted as an int field; its URL form must read back as one.
        items.append(format_item(pattern, {k: int(v) if isinstance(v, float) and v.is_integer() else v
                                           for k, v in fields.items()}))
    return items


def _query_pairs(options: Mapping[str, Any]) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    for key, value in options.items():
        if key in FEATURE_OPTIONS:
            pairs.extend((key, item) for item in feature_items(key, value))
        else:
            pairs.append((key, value))
    return pairs


def with_layer_options(url: str, options: Mapping[str, Any]) -> str:
    """``url`` with layer ``options`` added to its query (``group_history``/``group_presence`` as
    repeated items, after any the URL has: the first matching pattern wins). Several shard URLs
    take them on the last one, whose options apply to every shard."""
    pairs = _query_pairs(options)
    if not pairs:
        return url
    last = _URL_SPLIT.split(url)[-1]
    # ':' '*' '=' stay readable (chat.*:size=100): a query value is split at its first '=' only.
    return url + ("&" if "?" in last else "?") + urlencode(pairs, safe=":*=")


class SettingNames(NamedTuple):
    """How a framework spells each setting, for error messages (``"WSGI_CHANNELS_LAYER"``,
    ``"wsgi_channels.layer"``, ``"WSGI_CHANNELS['default']['LAYER']"``...)."""

    layer: str
    options: str
    routing: str
    allowed_origins: str
    sidecar_url: str
    token_secret: str
    presence_authorize: str = "the presence view's authorisation"

    def option(self, key: str) -> str:
        """The name of one layer option (``wsgi_channels.option.group_history`` where options are
        ``wsgi_channels.option.*``), else the options setting's own name."""
        return self.options.replace("*", key) if self.options.endswith("*") else self.options


@dataclass
class AppSettings:
    """An app's wsgi_channels settings, checked (build them with :meth:`parse`)."""

    #: The layer URL as configured (default: :func:`default_layer_url`), without the options.
    configured_layer: str
    #: Layer constructor keywords (``{"capacity": 500}``), folded into :attr:`layer_url`.
    options: dict = field(default_factory=dict)
    #: Extra routes for the worker: a list of routes or a dotted path to one, or None.
    routing: Any = None
    #: Origins (or host names) allowed to open WebSockets; empty allows any.
    allowed_origins: list[str] = field(default_factory=list)
    #: The sidecar's public URL when it is not on the app's origin (tokens are signed for it).
    sidecar_url: str = ""
    #: The secret connect tokens are signed with (the sidecar's ``--token-secret``).
    token_secret: Any = field(default="", repr=False)
    #: ``(request, group) -> bool``, or its dotted path: who may read the presence view (None: nobody, 404).
    presence_authorize: Any = None

    @cached_property
    def layer_url(self) -> str:
        """The layer URL with :attr:`options` in its query (``group_history``/``group_presence``
        as URL items): what every push, the worker and the sidecar commands use."""
        return with_layer_options(self.configured_layer, self.options)

    def presence_authorizer(self, setting: str = "") -> Optional[Callable[[Any, str], Any]]:
        """The callable :attr:`presence_authorize` names (imported once), or None.

        Raises :class:`ConfigurationError` naming ``setting`` when the path does not import or
        names something that is not callable."""
        value = self.presence_authorize
        if value is None or value == "":
            return None
        resolved = self.__dict__.get("_presence_authorizer")
        if resolved is None:
            if isinstance(value, str):
                from .config import import_object

                try:
                    resolved = import_object(value.strip())
                except ConfigurationError as e:
                    raise ConfigurationError(f"{setting}: {e}") from None
            else:
                resolved = value
            if not callable(resolved):
                raise ConfigurationError(f"{setting} must be a callable (request, group) -> bool or its dotted path, "
                                         f"got {resolved!r}")
            self.__dict__["_presence_authorizer"] = resolved
        return resolved

    @property
    def layer(self) -> Any:
        """This process's layer for :attr:`layer_url` (:func:`~wsgi_channels.get_layer`)."""
        from .channel import get_layer

        return get_layer(self.layer_url)

    @classmethod
    def parse(cls: type[_S], names: SettingNames, *, layer: Any = None, options: Any = None, routing: Any = None,
              allowed_origins: Any = None, sidecar_url: Any = None, token_secret: Any = None,
              presence_authorize: Any = None, **extra: Any) -> _S:
        """Check raw values (None: unset) and build the settings; ``extra`` goes to a subclass's fields.

        Raises :class:`ConfigurationError` naming the setting (``names``) and what is wrong with it.
        """
        from .layers import layer_class, parse_options

        if layer is None or layer == "":
            layer = default_layer_url()
        if not isinstance(layer, str):
            raise ConfigurationError(f"{names.layer} must be a layer URL string, got {type(layer).__name__}")
        layer = layer.strip()
        try:
            layer_class(layer)
        except ConfigurationError as e:
            raise ConfigurationError(f"{names.layer}: {e}") from None
        options = options or {}
        if not isinstance(options, dict):
            raise ConfigurationError(f"{names.options} must be a dict of layer keywords, got "
                                     f"{type(options).__name__}")
        for key, value in options.items():
            try:
                if key in FEATURE_OPTIONS:
                    feature_items(key, value)
                else:
                    parse_options(urlencode({key: value}))
            except ConfigurationError as e:
                raise ConfigurationError(f"{names.option(key)}: {e}") from None
        origins = allowed_origins or []
        origins = [origins] if isinstance(origins, str) else origins
        if not isinstance(origins, (list, tuple)) or not all(isinstance(o, str) for o in origins):
            raise ConfigurationError(f"{names.allowed_origins} must be a list of origins like "
                                     "'https://example.com'")
        sidecar = ""
        if sidecar_url:
            from .tokens import sidecar_base_url

            sidecar_base_url(sidecar_url, names.sidecar_url)
            sidecar = str(sidecar_url).strip()
        if token_secret is not None and not isinstance(token_secret, (str, bytes)):
            raise ConfigurationError(f"{names.token_secret} must be a string")
        if presence_authorize is not None and not isinstance(presence_authorize, str) \
                and not callable(presence_authorize):
            raise ConfigurationError(f"{names.presence_authorize} must be a callable (request, group) -> bool or its "
                                     f"dotted path ('myapp.auth:may_see_presence'), got {presence_authorize!r}")
        return cls(layer, dict(options), routing, list(origins), sidecar, token_secret or "",
                   presence_authorize or None, **extra)

    def sidecar_command(self, python: str, extra: list[str]) -> tuple[list[str], dict[str, str]]:
        """``(argv, environment)`` that start ``wsgi-channels sidecar`` on these settings in a fresh
        interpreter (``flask channels sidecar``, ``manage.py runsidecar``): the layer and origins as
        flags, the token secret (when a sidecar URL needs one) in the environment, out of ``ps``;
        ``extra`` flags come last, so they win."""
        argv = [python, "-m", "wsgi_channels", "sidecar", "--layer", self.layer_url]
        if self.allowed_origins:
            argv += ["--allowed-origins", *self.allowed_origins]
        env: dict[str, str] = {}
        secret = self.token_secret
        if self.sidecar_url and secret and not os.environ.get("WSGI_CHANNELS_TOKEN_SECRET_FILE"):
            try:
                env["WSGI_CHANNELS_TOKEN_SECRET"] = secret if isinstance(secret, str) else secret.decode()
            except UnicodeDecodeError:
                raise ConfigurationError(f"{self.__class__.__name__}: the token secret is not UTF-8 text; give "
                                         "the sidecar --token-secret-file or set WSGI_CHANNELS_TOKEN_SECRET") from None
        return argv + list(extra), env
