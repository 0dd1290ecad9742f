"""The worker's group commit of responses' last messages (ReplySender) over a real Redis."""
from __future__ import annotations

import threading

import pytest

from wsgi_channels.layers import from_url
from wsgi_channels.layers.redis import RedisChannelLayer
from wsgi_channels.worker.reply_sender import ReplySender


@pytest.fixture
def layer(redis_server):
    layer = from_url(redis_server.url, channel_capacity={"slow.*": 1})
    assert isinstance(layer, RedisChannelLayer)
    layer.flush()
    yield layer
    layer.flush()
    layer.close()


def test_messages_handed_over_during_a_send_go_in_the_next_round(layer):
    """The first thread sends at once; what others hand over meanwhile is one pipeline, and they
    do not wait for it."""
    sizes: list[int] = []
    first_in_flight, release = threading.Event(), threading.Event()
    real = layer.send_many

    def send_many(items):
        sizes.append(len(items))
        if len(sizes) == 1:
            first_in_flight.set()
            assert release.wait(10)
        return real(items)

    layer.send_many = send_many
    sender = ReplySender(layer)
    first = threading.Thread(target=sender.put, args=("reply.first", {"n": 0}, 5.0))
    first.start()
    assert first_in_flight.wait(10)
    for n in range(1, 8):
        sender.put(f"reply.{n}", {"n": n}, 5.0)  # returns at once: the first thread sends it
    assert sizes == [1], "nothing sent by the threads that handed over while a send was in flight"
    release.set()
    first.join(10)
    assert not first.is_alive()
    assert sizes == [1, 7]
    for n in range(1, 8):
        assert layer.receive([f"reply.{n}"]) == (f"reply.{n}", {"n": n})
    assert layer.receive(["reply.first"]) == ("reply.first", {"n": 0})


def test_a_full_channel_never_holds_back_other_responses(layer):
    """A message for a full channel is retried by its thread after it gave up the sending role."""
    layer.send("slow.client", {"n": 0})  # capacity 1: full
    sender = ReplySender(layer)
    blocked = threading.Thread(target=sender.put, args=("slow.client", {"n": 1}, 30.0))
    blocked.start()
    try:
        # Sent at once by this thread, while the other still retries its full channel.
        sender.put("fast.client", {"ok": True}, 5.0)
        assert layer.receive(["fast.client"], block=True, timeout=10) == ("fast.client", {"ok": True})
        assert blocked.is_alive(), "the full channel's message is still being retried"
    finally:
        assert layer.receive(["slow.client"], block=True, timeout=10) == ("slow.client", {"n": 0})
        blocked.join(30)
    assert not blocked.is_alive()
    assert layer.receive(["slow.client"], block=True, timeout=10) == ("slow.client", {"n": 1})
