"""Joining the Ray cluster the user names, else starting one on this machine that no other
machine can reach: every socket its processes listen on is on 127.0.0.1, and none outlives it."""

import ipaddress
import os
import re
import shutil
import subprocess
import time

import pytest

from fastimg.errors import InputError
from fastimg.workflows import ray_cluster


class _Ray:
    """What connect asks of the ray module, recording each ray.init."""

    __version__ = "2.x"

    def __init__(self, error=None):
        self.calls, self.error, self.stopped = [], error, False
        self.util = type("util", (), {"get_node_ip_address": staticmethod(lambda: "192.0.2.2")})

    def is_initialized(self):
        return False

    def init(self, **options):
        self.calls.append(options)
        if self.error is not None:
            raise self.error

    def shutdown(self):
        self.stopped = True


@pytest.fixture
def fake_ray(monkeypatch):
    """connect's ray module replaced by a recorder; RAY_ADDRESS unset."""
    fake = _Ray()
    monkeypatch.setattr(ray_cluster, "require", lambda *_: fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return fake


def test_a_named_address_is_joined_as_given(fake_ray, monkeypatch):
    ray_cluster.connect("head:6379")
    monkeypatch.setenv("RAY_ADDRESS", "ray://other:10001")
    ray_cluster.connect()
    assert [call["address"] for call in fake_ray.calls] == ["head:6379", "ray://other:10001"]
    assert not any("_node_ip_address" in call for call in fake_ray.calls)


def test_a_cluster_that_does_not_answer_names_the_fix(fake_ray):
    fake_ray.error = ConnectionError("timed out")
    with pytest.raises(InputError, match=r"no Ray cluster answers at head:6379: start one"):
        ray_cluster.connect("head:6379")


def test_a_ray_that_starts_off_loopback_is_stopped_and_refused(fake_ray):
    constants = pytest.importorskip("ray._private.ray_constants")
    clusters, environment = constants.ENABLE_RAY_CLUSTER, dict(os.environ)
    with pytest.raises(InputError, match=r"started on 192.0.2.2, not on 127.0.0.1 alone"):
        ray_cluster.connect()
    assert fake_ray.calls[0]["address"] == "local" and fake_ray.stopped
    assert fake_ray.calls[0]["_node_ip_address"] == "127.0.0.1"
    assert (constants.ENABLE_RAY_CLUSTER, dict(os.environ)) == (clusters, environment)


def processes() -> dict:
    """{pid: parent pid} of every process on this machine."""
    parents = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError, ValueError):
            continue
        if fields[0] != "Z":  # a zombie has exited; only its parent's wait is missing
            parents[int(name)] = int(fields[1])
    return parents


def descendants(pid: int) -> set:
    """The processes started by `pid`, by its children, and so on."""
    parents, found = processes(), {pid}
    while True:
        more = {child for child, parent in parents.items() if parent in found} - found
        if not more:
            return found - {pid}
        found |= more


def listeners(pids: set) -> list:
    """(local address, process) of each TCP or UDP socket that one of `pids` listens on."""
    lines = subprocess.run(["ss", "-Htulnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in lines.splitlines():
        owners = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            found.append((line.split()[4], line.split()[-1]))
    return found


def on_loopback(address: str) -> bool:
    """Whether `address` (as ss prints it: 127.0.0.1:53, [::1]:53, *:53) is on loopback."""
    host = address.rsplit(":", 1)[0].strip("[]").split("%")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # *: every interface
        return False
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def outside_loopback(found: list) -> list:
    """The (address, process) of `found` that listen outside loopback."""
    return sorted({(address, owner) for address, owner in found if not on_loopback(address)})


def need_ss() -> None:
    """Skip the test where ss cannot list the listening sockets."""
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed: the listening sockets cannot be listed")


def test_ss_addresses_on_loopback_are_told_from_the_rest():
    assert all(map(on_loopback, ["127.0.0.1:6379", "[::1]:80", "[::ffff:127.0.0.1]:4"]))
    assert not any(map(on_loopback, ["0.0.0.0:6379", "*:6379", "[::]:80", "192.0.2.2:52365"]))


def test_ray_started_here_listens_on_loopback_alone_and_leaves_nothing_behind(monkeypatch):
    ray = pytest.importorskip("ray")
    need_ss()
    assert not ray.is_initialized()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_cluster.connect()  # as --ray does without --ray-address
    try:
        assert ray.get(ray.remote(lambda: 1).remote()) == 1  # a worker listens too
        started, found = set(), []
        for _ in range(10):  # the agents start in the background: look a few times
            started |= descendants(os.getpid())
            found += listeners(started | {os.getpid()})
            time.sleep(0.5)
    finally:
        ray.shutdown()
    assert not outside_loopback(found), outside_loopback(found)
    assert len({owner for _, owner in found}) >= 3, found  # the GCS, the raylet, the agents...
    deadline = time.monotonic() + 30
    while started & set(processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not started & set(processes()), "Ray processes outlived ray.shutdown()"
