"""Worker hosts with their own network: a bridge on this machine and, for each host, a network
namespace joined to it by a veth pair, with its own address (``ip``, as root). A host reaches
this machine only at the bridge's address, where the test puts the services (the sandbox
listens there; PostgreSQL and the broker are relayed there, tests/dagster/relay.py); its own
127.0.0.1 is its own. Everything is removed by close()."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

import pytest


def require_network_namespaces() -> None:
    if shutil.which("ip") is None or os.geteuid() != 0:
        message = "worker hosts with their own network need `ip netns` (iproute2) as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class HostNetwork:
    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.subnet = 100 + secrets.randbelow(150)  # 10.231.<subnet>.0/24
        self.bridge = f"etlb{self.tag}"
        self.address = f"10.231.{self.subnet}.1"  # this machine, as the hosts see it
        self.namespaces: list[str] = []
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add_host(self) -> list[str]:
        """A new host's namespace, joined to the bridge: the command prefix that runs there."""
        n = len(self.namespaces) + 1
        namespace, veth = f"etl-{self.tag}-{n}", f"etlv{self.tag}{n}"
        ip("netns", "add", namespace)
        self.namespaces.append(namespace)
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        ip("link", "set", veth, "master", self.bridge)
        ip("link", "set", veth, "up")
        ip("-n", namespace, "addr", "add", f"10.231.{self.subnet}.{n + 1}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        return ["ip", "netns", "exec", namespace]

    def close(self) -> None:
        """After the hosts' processes ended: the namespaces (and their veths) and the bridge."""
        for namespace in self.namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
