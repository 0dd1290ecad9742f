"""The bodies the Redis layer stores: msgpack, encrypted when the layer has keys.

A body is a message encoded by :mod:`wsgi_channels.serialization` (msgpack: bytes stay
bytes), then, with ``symmetric_encryption_keys``, encrypted with the first key (Fernet,
:func:`.options.fernet`); any of the keys decrypts. The entry around a body (its deadline
and targets) is :mod:`.entries`' business, and stays in clear text for the scripts.
"""
from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped]  # no type information shipped

from ... import exceptions as exc
from ...serialization import encode
from .options import fernet

__all__ = ["Bodies"]


class Bodies:
    """Seals messages into bodies and opens them again, with the layer's encryption keys (if any)."""

    __slots__ = ("fernet",)

    def __init__(self, keys: Any) -> None:
        #: The ``MultiFernet`` of ``symmetric_encryption_keys``, or None: bodies in clear text.
        self.fernet = fernet(keys)

    def seal(self, message: dict, max_message_size: int) -> bytes:
        """The stored body of ``message`` (``MessageTooLarge`` over ``max_message_size``, checked
        on the encoded message, before encryption)."""
        body = encode(message, max_message_size)
        if self.fernet is not None:
            body = self.fernet.encrypt(body)
        return body

    def plaintext(self, body: bytes | memoryview) -> bytes | memoryview:
        """The encoded message inside a stored body (decrypted)."""
        if self.fernet is None:
            return body
        from cryptography.fernet import InvalidToken

        try:
            return self.fernet.decrypt(bytes(body))
        except InvalidToken:
            raise exc.ChannelsError(
                "a message could not be decrypted: no key in symmetric_encryption_keys matches it"
            ) from None

    def open(self, body: bytes | memoryview) -> dict:
        """The message of a stored body."""
        return self.decoded(self.plaintext(body))

    @staticmethod
    def decoded(plain: bytes | memoryview) -> dict:
        """The message of an encoded (decrypted) body."""
        try:
            return msgpack.unpackb(plain, raw=False, strict_map_key=True)
        except (ValueError, msgpack.UnpackException) as e:
            raise exc.ChannelsError(f"a stored message could not be decoded ({e}): "
                                    "is another application using the same key prefix?") from None
