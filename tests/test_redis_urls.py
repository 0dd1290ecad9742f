"""Parsing of ``redis+cluster://`` and ``redis+sentinel://`` URLs (:mod:`wsgi_channels.layers.redis.urls`).

Pure parsing: nothing connects here. What the parsed URL is good for is shown at the end
against the real test deployments: the node and sentinel URLs it makes reach them with
the credentials given.
"""
from __future__ import annotations

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from wsgi_channels import exceptions as exc
from wsgi_channels.layers.redis.urls import is_topology_url, parse_topology_url, redact


def test_cluster_url_with_seeds_credentials_and_options():
    url = parse_topology_url("redis+cluster://app:s%40cret%3A1@10.0.0.1:7000,node-b:7001,[::1]:7002/"
                             "?ssl_cert_reqs=none&capacity=500&expiry=30")
    assert url.kind == "cluster" and url.tls is False
    assert url.nodes == (("10.0.0.1", 7000), ("node-b", 7001), ("::1", 7002))
    assert (url.username, url.password, url.db, url.service_name) == ("app", "s@cret:1", 0, None)
    assert url.options == (("ssl_cert_reqs", "none"), ("capacity", "500"), ("expiry", "30"))
    assert url.node_url("10.0.0.9", 7005) == \
        "redis://app:s%40cret%3A1@10.0.0.9:7005/0?ssl_cert_reqs=none&capacity=500&expiry=30"
    assert url.node_url("::1", 7002).startswith("redis://app:s%40cret%3A1@[::1]:7002/0")


@pytest.mark.parametrize("text, nodes, tls", [
    ("redis+cluster://a:7000", (("a", 7000),), False),
    ("redis+cluster://a", (("a", 6379),), False),
    ("rediss+cluster://a:7000/0", (("a", 7000),), True),
    ("REDISS+CLUSTER://a:7000,a:7000,b/?db=0", (("a", 7000), ("b", 6379)), True),  # repeats dropped
    ("  redis+cluster://a:1 , b:2/  ", (("a", 1), ("b", 2)), False),
])
def test_cluster_url_forms(text, nodes, tls):
    url = parse_topology_url(text)
    assert (url.kind, url.nodes, url.tls, url.db) == ("cluster", nodes, tls, 0)


def test_sentinel_url_parts():
    url = parse_topology_url("rediss+sentinel://:data-pw@s1:26380,s2,s3:26381/mymaster/3"
                             "?sentinel_username=watch&sentinel_password=s%26pw&sentinel_ssl=true&socket_timeout=2")
    assert url.kind == "sentinel" and url.tls is True
    assert url.nodes == (("s1", 26380), ("s2", 26379), ("s3", 26381))
    assert (url.username, url.password, url.service_name, url.db) == (None, "data-pw", "mymaster", 3)
    assert (url.sentinel_username, url.sentinel_password, url.sentinel_tls) == ("watch", "s&pw", True)
    assert url.options == (("socket_timeout", "2"),)
    assert url.node_url("10.1.1.1", 6380) == "rediss://:data-pw@10.1.1.1:6380/3?socket_timeout=2"
    assert url.sentinel_url("s1", 26380) == "rediss://watch:s%26pw@s1:26380"


@pytest.mark.parametrize("text, service, db", [
    ("redis+sentinel://s/mymaster", "mymaster", 0),
    ("redis+sentinel://s/mymaster/", "mymaster", 0),
    ("redis+sentinel://s/mymaster/0/", "mymaster", 0),
    ("redis+sentinel://s/mymaster?db=4", "mymaster", 4),
    ("redis+sentinel://s/cache-1.prod/15", "cache-1.prod", 15),
])
def test_sentinel_url_forms(text, service, db):
    url = parse_topology_url(text)
    assert (url.service_name, url.db, url.tls, url.sentinel_tls, url.sentinel_password) == (service, db, False, False, None)


@pytest.mark.parametrize("text, problem", [
    ("redis+cluster://a:7000/1", "a Redis Cluster has only database 0, and this URL asks for database 1"),
    ("redis+cluster://a:7000/?db=2", "a Redis Cluster has only database 0, and this URL asks for database 2"),
    ("rediss+cluster://a:7000/15", "only database 0"),
    ("redis+cluster://a:7000/x", "the database 'x' is not a number"),
    ("redis+cluster://a:7000/0/1", "more parts than /[0]"),
    ("redis+cluster://a:7000/1?db=1", "only database 0"),
    ("redis+sentinel://s/m/1?db=2", "the database is given twice"),
    ("redis+sentinel://s:26379", "the service name is missing"),
    ("redis+sentinel://s:26379/", "the service name is missing"),
    ("redis+sentinel://s/m/0/9", "'9' is left over"),
    ("redis+cluster://", "no host"),
    ("redis+cluster://u:p@/", "no host"),
    ("redis+cluster://a:1,,b:2", "an empty host"),
    ("redis+cluster://a:1,", "an empty host"),
    ("redis+cluster://a:0", "the port '0' of 'a:0' is not a number from 1 to 65535"),
    ("redis+cluster://a:65536", "not a number from 1 to 65535"),
    ("redis+cluster://a:port", "the port 'port'"),
    ("redis+cluster://::1:7000", "put an IPv6 address in brackets"),
    ("redis+cluster://[::1:7000", "is not written [ADDRESS]"),
    ("redis+cluster://a b:1", "is not a host name or address"),
    ("redis+cluster://a:1/?sentinel_password=x", "sentinel_password is an option of redis+sentinel:// URLs only"),
    ("redis+sentinel://s/m?sentinel_ssl=maybe", "sentinel_ssl='maybe' is not true or false"),
    ("redis+sentinel://s/m?sentinel_password=", "sentinel_password is empty"),
    ("redis+cluster://user:@a:1", "the password after ':' is empty"),
    ("redis+sentinel://s/my%20master", "is not one a sentinel can monitor"),
    ("redis://a:6379/0", "the scheme must be one of redis+cluster://, rediss+cluster://"),
    ("redis+clusters://a", "the scheme must be one of"),
    ("a:7000", "the scheme must be one of"),
])
def test_bad_urls_say_what_is_wrong(text, problem):
    with pytest.raises(exc.ConfigurationError) as info:
        parse_topology_url(text)
    assert problem in str(info.value)
    assert str(info.value).startswith("invalid Redis layer URL ")
    assert isinstance(info.value, ValueError)  # ConfigurationError is one


def test_not_a_string():
    with pytest.raises(exc.ConfigurationError, match="must be a string, not list"):
        parse_topology_url(["redis+cluster://a:1"])


@pytest.mark.parametrize("text", [
    "redis+cluster://app:top-secret@a:1/2",
    "redis+cluster://:top-secret@a:1/?ssl_password=top-secret&db=4",
    "redis+sentinel://u:top/secret@s/m",  # an unencoded '/' in the password
    "redis+sentinel://s/m?sentinel_password=top-secret&sentinel_ssl=perhaps",
])
def test_errors_never_show_a_password(text):
    with pytest.raises(exc.ConfigurationError) as info:
        parse_topology_url(text)
    assert "top" not in str(info.value) and "secret" not in str(info.value)
    assert "***" in str(info.value)


def test_str_and_repr_hide_passwords_and_round_trip():
    text = ("rediss+sentinel://u:pw1@s1:1,s2:2/mymaster/2"
            "?ssl_password=pw2&sentinel_password=pw3&sentinel_username=w&sentinel_ssl=1&x=1")
    url = parse_topology_url(text)
    for shown in (str(url), repr(url)):
        assert "pw1" not in shown and "pw2" not in shown and "pw3" not in shown
    assert str(url) == ("rediss+sentinel://u:***@s1:1,s2:2/mymaster/2"
                        "?ssl_password=***&x=1&sentinel_username=w&sentinel_password=***&sentinel_ssl=true")
    plain = parse_topology_url("redis+cluster://a:1,b:2")
    assert parse_topology_url(str(plain)) == plain


def test_redact():
    assert redact("redis+cluster://u:p@a:1/?sentinel_password=s&ssl_password=k&x=1") == \
        "redis+cluster://u:***@a:1/?sentinel_password=***&ssl_password=***&x=1"
    assert redact("redis+cluster://a:1/") == "redis+cluster://a:1/"
    assert redact("redis+cluster://user@a:1/") == "redis+cluster://user@a:1/"


def test_is_topology_url():
    assert is_topology_url("redis+cluster://a") and is_topology_url(" REDISS+SENTINEL://s/m")
    assert not is_topology_url("redis://a:1/0") and not is_topology_url(None) and not is_topology_url("memory://")


# -- against the real deployments ---------------------------------------------------------------


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, retry=Retry(NoBackoff(), 0))


def test_node_urls_reach_the_cluster_with_its_password():
    from redis_topology import RedisClusterSet

    cluster = RedisClusterSet(password="p@ss:w/rd").start()
    try:
        url = parse_topology_url(cluster.url.replace("p@ss:w/rd", "p%40ss%3Aw%2Frd"))
        assert len(url.nodes) == 6 and url.password == "p@ss:w/rd"
        for host, port in url.nodes:
            with _client(url.node_url(host, port)) as c:
                assert "cluster_state:ok" in c.execute_command("CLUSTER", "INFO").decode()
    finally:
        cluster.stop()


def test_sentinel_urls_reach_the_sentinels_and_the_primary():
    from redis_topology import RedisSentinelSet

    sentinels = RedisSentinelSet(password="data-pw", sentinel_password="watch-pw").start()
    try:
        url = parse_topology_url(sentinels.url)
        assert url.service_name == "mymaster" and url.sentinel_password == "watch-pw" and url.password == "data-pw"
        for host, port in url.nodes:
            with _client(url.sentinel_url(host, port)) as c:
                host_, port_ = c.sentinel_get_master_addr_by_name(url.service_name)
                assert int(port_) == sentinels.primary().port
        with _client(url.node_url(host_.decode() if isinstance(host_, bytes) else host_, int(port_))) as c:
            assert c.execute_command("ROLE")[0] == b"master"
    finally:
        sentinels.stop()
