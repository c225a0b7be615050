"""Redis key names: all under the namespace, and in the default one the names a running
stack already holds (so an upgrade finds its breakers and once-keys again)."""

from __future__ import annotations

from gateway_runtime.redis_keys import RedisKeys


def _every_name(keys: RedisKeys) -> list[str]:
    return [
        keys.stream("s"),
        keys.live("s"),
        keys.turn_ended("t"),
        keys.tool_calls("t", 1),
        keys.tool_result("t", 1, "c"),
        keys.rate_log("rpm_per_key", "key:k"),
        keys.breaker("m@u"),
        keys.deployment_stats("m@u"),
        keys.api_key("k"),
        keys.api_key_used("k"),
        keys.turn_attempts("t"),
    ]


def test_every_name_is_under_the_namespace() -> None:
    assert all(name.startswith("mesh2:") for name in _every_name(RedisKeys("mesh2")))
    assert RedisKeys("mesh2").live_pattern == "mesh2:live:*"
    assert RedisKeys("mesh2").everything == "mesh2:*"


def test_the_default_namespace_keeps_the_names_of_earlier_releases() -> None:
    assert _every_name(RedisKeys()) == [
        "soma:events:s",
        "soma:live:s",
        "soma:turn-ended:t",
        "soma:tool-call:t:1",
        "soma:tool-result:t:1:c",
        "soma:rl:rpm_per_key:key:k",
        "soma:breaker:m@u",
        "soma:deployment-stats:m@u",
        "soma:apikey:k",
        "soma:apikey:used:k",
        "soma:turn-attempts:t",
    ]
