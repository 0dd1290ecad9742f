"""Class-based consumers: ``WebsocketConsumer``, ``JsonWebsocketConsumer``, ``WebsocketDemultiplexer``.

Route them with ``route_class(MyConsumer, path=r"^/chat/")``. One instance is
made per message (the class is the consumer: ``MyConsumer(message, **kwargs)``
handles the message in its constructor, as in Channels 1.x), so instances hold
no state between messages: use ``@channel_session`` (``channel_session = True``)
or groups for that.

::

    class Chat(JsonWebsocketConsumer):
        def connection_groups(self, **kwargs):
            return ["chat-" + kwargs["room"]]

        def receive(self, content, **kwargs):
            self.group_send("chat-" + kwargs["room"], {"said": content["text"]})
"""
from __future__ import annotations

import json
import logging
from typing import Any, Optional

from wsgi_channels.protocol.close_codes import CLOSE_INVALID_PAYLOAD

from ..channel import Channel, Group
from .message import Message
from .sessions import channel_session as _channel_session
from .sessions import enforce_ordering as _enforce_ordering

__all__ = ["BaseConsumer", "WebsocketConsumer", "JsonWebsocketConsumer", "WebsocketDemultiplexer",
           "WebsocketMultiplexer"]

log = logging.getLogger(__name__)


class BaseConsumer:
    """Dispatch a message to the method named for its channel in ``method_mapping``."""

    method_mapping: dict[str, str] = {}
    #: Wrap the handler with ``@channel_session``.
    channel_session = False
    #: ``True``: strict ``@enforce_ordering``; ``"slight"``: only wait for connect.
    strict_ordering: Any = False

    def __init__(self, message: Message, **kwargs: Any) -> None:
        self.message = message
        self.kwargs = kwargs
        self.dispatch(message, **kwargs)

    @classmethod
    def channel_names(cls) -> set[str]:
        return set(cls.method_mapping)

    def get_handler(self, message: Message, **kwargs: Any) -> Any:
        name = self.method_mapping.get(message.channel.name)
        if name is None:
            raise ValueError(f"{type(self).__name__} has no method for channel {message.channel.name!r}")
        handler = getattr(self, name)
        if self.channel_session:
            handler = _channel_session(handler)
        if self.strict_ordering:
            handler = _enforce_ordering(handler, slight=self.strict_ordering == "slight")
        return handler

    def dispatch(self, message: Message, **kwargs: Any) -> Any:
        return self.get_handler(message, **kwargs)(message, **kwargs)


class WebsocketConsumer(BaseConsumer):
    """A WebSocket connection's connect, receive and disconnect.

    Override :meth:`connect` (accepts by default), :meth:`receive` and
    :meth:`disconnect`; :meth:`connection_groups` names groups the connection
    joins on connect and leaves on disconnect.
    """

    method_mapping = {
        "websocket.connect": "raw_connect",
        "websocket.receive": "raw_receive",
        "websocket.disconnect": "raw_disconnect",
    }

    def connection_groups(self, **kwargs: Any) -> list[str]:
        return []

    @property
    def reply_channel(self) -> Channel:
        """The connection's reply channel (a WebSocket message always has one)."""
        reply = self.message.reply_channel
        if reply is None:
            raise ValueError(f"{type(self).__name__}: message on {self.message.channel.name!r} has no reply_channel")
        return reply

    def raw_connect(self, message: Message, **kwargs: Any) -> None:
        for group in self.connection_groups(**kwargs):
            Group(group, layer=message.channel_layer).add(self.reply_channel)
        self.connect(message, **kwargs)

    def connect(self, message: Message, **kwargs: Any) -> None:
        """Accept the connection (override to check it; call :meth:`close` to reject)."""
        self.accept()

    def raw_receive(self, message: Message, **kwargs: Any) -> None:
        if message.get("text") is not None:
            self.receive(text=message["text"], **kwargs)
        else:
            self.receive(bytes=message.get("bytes"), **kwargs)

    def receive(self, text: Optional[str] = None, bytes: Optional[bytes] = None, **kwargs: Any) -> None:
        """Called with each frame; does nothing by default."""

    def raw_disconnect(self, message: Message, **kwargs: Any) -> None:
        for group in self.connection_groups(**kwargs):
            Group(group, layer=message.channel_layer).discard(self.reply_channel)
        self.disconnect(message, **kwargs)

    def disconnect(self, message: Message, **kwargs: Any) -> None:
        """Called when the connection closed."""

    # -- replies ----------------------------------------------------------------------------

    def accept(self, subprotocol: Optional[str] = None) -> None:
        content: dict = {"accept": True}
        if subprotocol is not None:
            content["subprotocol"] = subprotocol
        self.reply_channel.send(content)

    def send(self, text: Optional[str] = None, bytes: Optional[bytes] = None, close: Any = False) -> None:
        """Send a frame on this connection (and close it after, if ``close``)."""
        self.reply_channel.send(self.encode(text, bytes, close))

    def close(self, code: Any = True) -> None:
        """Close the connection (``code`` True means 1000); before accepting, this rejects it."""
        self.reply_channel.send({"close": code})

    @classmethod
    def group_send(cls, name: str, text: Optional[str] = None, bytes: Optional[bytes] = None,
                   close: Any = False) -> None:
        Group(name).send(cls.encode(text, bytes, close))

    @staticmethod
    def encode(text: Optional[str], bytes: Optional[bytes], close: Any) -> dict:
        content: dict = {}
        if text is not None:
            content["text"] = text
        elif bytes is not None:
            content["bytes"] = bytes
        else:
            raise ValueError("send() needs text or bytes")
        if close:
            content["close"] = close
        return content


class JsonWebsocketConsumer(WebsocketConsumer):
    """A WebSocket consumer that speaks JSON text frames.

    :meth:`receive` gets the decoded value; :meth:`send` and :meth:`group_send`
    take a value to encode. A frame that is not JSON is logged and the
    connection is closed with 1007 (inconsistent data).
    """

    def __init__(self, message: Message, multiplexer: Optional["WebsocketMultiplexer"] = None,
                 **kwargs: Any) -> None:
        self.multiplexer = multiplexer
        super().__init__(message, **kwargs)

    def raw_receive(self, message: Message, **kwargs: Any) -> None:
        text = message.get("text")
        if text is None:
            log.warning("binary frame sent to a JSON consumer on %r: closing with 1007", message.get("path"))
            self.close(CLOSE_INVALID_PAYLOAD)
            return
        try:
            content = self.decode_json(text)
        except ValueError:
            log.warning("non-JSON text frame on %r: closing with 1007", message.get("path"))
            self.close(CLOSE_INVALID_PAYLOAD)
            return
        self.receive(content, **kwargs)

    def receive(self, content: Any = None, **kwargs: Any) -> None:  # type: ignore[override]
        """Called with each decoded JSON value; does nothing by default."""

    def accept(self, subprotocol: Optional[str] = None) -> None:
        if self.multiplexer is None:
            super().accept(subprotocol)

    def send(self, content: Any, close: Any = False) -> None:  # type: ignore[override]
        if self.multiplexer is not None:
            self.multiplexer.send(content)
            if close:
                self.close(close)
            return
        super().send(text=self.encode_json(content), close=close)

    @classmethod
    def group_send(cls, name: str, content: Any, close: Any = False) -> None:  # type: ignore[override]
        WebsocketConsumer.group_send(name, text=cls.encode_json(content), close=close)

    @classmethod
    def decode_json(cls, text: str) -> Any:
        return json.loads(text)

    @classmethod
    def encode_json(cls, content: Any) -> str:
        return json.dumps(content, separators=(",", ":"))


class WebsocketMultiplexer:
    """What a stream consumer behind a demultiplexer sends through: ``{"stream": ..., "payload": ...}``."""

    def __init__(self, stream: str, reply_channel: Any) -> None:
        self.stream = stream
        self.reply_channel = reply_channel

    def send(self, payload: Any) -> None:
        self.reply_channel.send({"text": json.dumps({"stream": self.stream, "payload": payload},
                                                     separators=(",", ":"))})

    @classmethod
    def group_send(cls, name: str, stream: str, payload: Any) -> None:
        Group(name).send({"text": json.dumps({"stream": stream, "payload": payload}, separators=(",", ":"))})


class WebsocketDemultiplexer(JsonWebsocketConsumer):
    """Several JSON streams on one socket: frames are ``{"stream": name, "payload": value}``.

    ``consumers`` maps stream names to :class:`JsonWebsocketConsumer`
    subclasses; each gets connect and disconnect, and the receives of its
    stream; its ``send`` wraps the value for its stream. A frame naming an
    unknown stream is logged and ignored.
    """

    consumers: dict[str, type] = {}

    def _stream_message(self, message: Message, **extra: Any) -> Message:
        copy = message.copy()
        copy.content.update(extra)
        return copy

    def connect(self, message: Message, **kwargs: Any) -> None:
        self.accept()
        for stream, consumer in self.consumers.items():
            consumer(message.copy(), multiplexer=WebsocketMultiplexer(stream, message.reply_channel), **kwargs)

    def receive(self, content: Any = None, **kwargs: Any) -> None:  # type: ignore[override]
        if not isinstance(content, dict) or "stream" not in content or "payload" not in content:
            log.warning("demultiplexer frame is not {\"stream\": ..., \"payload\": ...}: ignored")
            return
        stream = content["stream"]
        consumer = self.consumers.get(stream) if isinstance(stream, str) else None
        if consumer is None:
            log.warning("demultiplexer: no consumer for stream %r: ignored", stream)
            return
        inner = self._stream_message(self.message, text=json.dumps(content["payload"]), bytes=None)
        consumer(inner, multiplexer=WebsocketMultiplexer(stream, self.message.reply_channel), **kwargs)

    def disconnect(self, message: Message, **kwargs: Any) -> None:
        for stream, consumer in self.consumers.items():
            consumer(message.copy(), multiplexer=WebsocketMultiplexer(stream, message.reply_channel), **kwargs)

    @classmethod
    def group_send(cls, name: str, stream: str, payload: Any, close: Any = False) -> None:  # type: ignore[override]
        WebsocketMultiplexer.group_send(name, stream, payload)
