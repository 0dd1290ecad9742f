"""The adapters' presence view and ``channels_position`` over a real server: gunicorn serving a Flask,
a Pyramid and a Django app on one ``ipc://`` store, the test process adding members as a consumer would.

The apps configure history and presence through their own options setting (Flask
``WSGI_CHANNELS_OPTIONS``, Pyramid ``wsgi_channels.option.*``, Django ``OPTIONS``) on the layer URL
of ``WSGI_CHANNELS_LAYER``; the test's layer has the same patterns in its URL.
"""
from __future__ import annotations

import pytest
import requests

import stack

from wsgi_channels import Group
from wsgi_channels.layers import from_url
from wsgi_channels.presence import conn_id

APPS = {"flask": ("apps.presence_apps:flask_app", {}),
        "pyramid": ("apps.presence_apps:pyramid_app", {}),
        "django": ("apps.presence_apps:django_app", {"DJANGO_SETTINGS_MODULE": "apps.presence_apps"})}
MEMBER = {"X-Member": "yes"}


@pytest.mark.parametrize("framework", sorted(APPS))
def test_presence_view_and_position_under_gunicorn(framework, tmp_path):
    store = f"ipc://{tmp_path / 'channels.db'}"
    layer = from_url(store + "?group_history=chat.*:size=50&group_presence=room.*:max_members=100")
    app, extra = APPS[framework]
    web = stack.gunicorn(app, stack.ROOT / "tests", stack.env_for(store, stack.ROOT / "tests", **extra), tmp_path,
                         workers=2)
    try:
        web.start()
        base = f"http://127.0.0.1:{web.port}"
        a, b = layer.new_channel("test.a?"), layer.new_channel("test.b?")
        Group("room.lobby", layer=layer).add(a, presence={"user": "alice", "info": {"tab": 1}})
        Group("room.lobby", layer=layer).add(b, presence={"user": "bob"})
        response = requests.get(f"{base}/_wsgi_channels/presence/room.lobby", headers=MEMBER, timeout=10)
        assert response.status_code == 200, (response.status_code, response.text, web.log()[-2000:])
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Type"].startswith("application/json")
        body = response.json()
        assert (body["group"], body["clients"], body["users"]) == ("room.lobby", 2, 2)
        assert {m["id"]: (m["user"], m["info"]) for m in body["members"]} == {conn_id(a): ("alice", {"tab": 1}),
                                                                             conn_id(b): ("bob", None)}
        assert a not in response.text and b not in response.text
        Group("room.lobby", layer=layer).discard(b)  # a leave is seen at once
        assert [m["user"] for m in requests.get(f"{base}/_wsgi_channels/presence/room.lobby", headers=MEMBER,
                                                timeout=10).json()["members"]] == ["alice"]
        for path, headers, status in [("room.lobby", {}, 403), ("room.secret", MEMBER, 403),
                                      ("no%20such:group", MEMBER, 400), ("chat.lobby", MEMBER, 404)]:
            got = requests.get(f"{base}/_wsgi_channels/presence/{path}", headers=headers, timeout=10)
            assert (got.status_code, got.headers.get("Cache-Control")) == (status, "no-store"), (path, got.text)
        # channels_position: the app process and this one share the store's epoch and offsets.
        Group("chat.lobby", layer=layer).send({"text": "one"})
        Group("chat.lobby", layer=layer).send({"text": "two"})
        position = requests.get(f"{base}/page", timeout=10).json()
        assert position == {"epoch": layer.group_position("chat.lobby").epoch, "offset": 2}
    finally:
        web.stop()
        layer.close()
