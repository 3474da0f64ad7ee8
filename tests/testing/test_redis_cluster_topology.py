"""RedisClusterTopology's pure parts (the live cluster is exercised by
tests/integration/redis/test_redis_cluster.py)."""

from __future__ import annotations

from poolguard.testing.servers.redis_cluster import _parse_node, key_slot


def test_key_slot_matches_redis() -> None:
    # Values from CLUSTER KEYSLOT on redis-server 7.0.
    assert key_slot("foo") == 12182
    assert key_slot("{user1000}.following") == key_slot("user1000")
    assert key_slot("foo{}{bar}") == key_slot(b"foo{}{bar}") != key_slot("bar")  # {}: whole key


def test_cluster_nodes_line() -> None:
    line = (
        "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004 slave "
        "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected"
    )
    node = _parse_node(line)
    assert (node.port, node.role, node.slots, node.failed) == (30004, "slave", (), False)
    master = _parse_node(
        "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 "
        "connected 0-5460 6000 [5461->-07c37dfeb235213a872192d90877d0cd55635b91]"
    )
    assert master.role == "master"
    assert master.slots == ((0, 5460), (6000, 6000))
    failed = _parse_node("abc 127.0.0.1:30002@40002 master,fail - 0 0 2 disconnected 5461-10922")
    assert failed.failed
