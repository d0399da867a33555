"""Which Host and Origin the server answers: unit checks of serve.guard's rules."""

import pytest

pytest.importorskip("fastapi")

from fastimg.serve.guard import RequestGuard, allowed_hosts, host_name  # noqa: E402


def guard(bind_host=None, extra=(), cors=()) -> RequestGuard:
    return RequestGuard(None, allowed_hosts(bind_host, extra), cors)


def test_host_names_lose_their_port():
    assert [host_name(h) for h in ("127.0.0.1:8000", "[::1]:80", "Example.COM", "::1")] == [
        "127.0.0.1", "::1", "example.com", "::1"
    ]  # fmt: skip


def test_a_loopback_server_takes_loopback_addresses_its_own_and_allowed_names():
    for bind in (None, "127.0.0.1", "127.0.0.2", "localhost"):
        rules = guard(bind, extra=("studio.local",))
        for host in ("127.0.0.2:8000", "127.9.9.9", "[::1]:8000", "localhost:1", "studio.local"):
            assert rules.refusal(host, None) is None, (bind, host)
        for host in ("attacker.example", "127.0.0.1.nip.io", "localhost.attacker.example", None):
            assert "does not answer to the host" in rules.refusal(host, None), (bind, host)


def test_a_server_beyond_loopback_checks_hosts_only_where_it_was_given_some():
    assert guard("0.0.0.0").refusal("anything.example", None) is None
    assert guard("0.0.0.0", extra=("api.example",)).refusal("other.example", None)


def test_origins_its_own_page_the_cors_ones_and_a_wildcard():
    rules = guard(cors=("https://app.example/",))
    assert rules.refusal("127.0.0.1:8000", "http://127.0.0.1:8000") is None  # its own page
    assert rules.refusal("127.0.0.1:8000", "https://app.example") is None  # slash or not
    assert "--cors" in rules.refusal("127.0.0.1:8000", "https://evil.example")
    assert "--cors" in rules.refusal("127.0.0.1:8000", "null")
    assert guard(cors=("*",)).refusal("127.0.0.1:8000", "https://any.example") is None
