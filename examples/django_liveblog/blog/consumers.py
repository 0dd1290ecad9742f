"""WebSocket consumers: only logged-in users may connect (``manage.py runworker`` runs ``routing``)."""
import json

from wsgi_channels import Group, route
from wsgi_channels.adapters.django import django_consumer, login_required

from .signals import GROUP


@login_required
def ws_connect(message) -> None:
    Group(GROUP).add(message.reply_channel)
    message.reply_channel.send({"accept": True})
    message.reply_channel.send({"text": json.dumps({"hello": message.user.get_username()})})


@django_consumer
def ws_disconnect(message) -> None:
    Group(GROUP).discard(message.reply_channel)


routing = [
    route("websocket.connect", ws_connect, path=r"^/ws/posts/$"),
    route("websocket.disconnect", ws_disconnect, path=r"^/ws/posts/$"),
]
