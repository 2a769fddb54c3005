"""The agent's local attach API (docs/localapi.md), driven over its real unix socket as the CNI
shim and the Docker driver drive it.

Real: a lab of two simulated hosts (etcd + kube-apiserver, the operator, OVS and one voile-agent
per host, each agent serving its own socket), kubectl-free API checks, ping. Each test uses its
own network and owners; the lab has its own run id and underlay, so nothing else is touched.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.labtools import api as kube_call
from voile import kube
from voile.agentapi import AgentClient
from voile.api import constants as c
from voile.lab.host import add_netns, del_netns
from voile.lab.lab import Lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("lab"), run_id=f"la{secrets.token_hex(2)}", underlay_octet=13)
    try:
        lab.up(hosts=2, datapath="ovs")
        yield lab
    finally:
        lab.down()


@pytest.fixture
def netns() -> Iterator[Any]:
    """Makes /run/netns namespaces for a test and removes those still there afterwards."""
    made: list[str] = []

    def make(short: str) -> str:
        name = f"vla-{secrets.token_hex(3)}-{short}"
        add_netns(name)
        made.append(name)
        return f"/run/netns/{name}"

    yield make
    for name in made:
        del_netns(name)


def api(lab: Lab, host: int) -> AgentClient:
    return AgentClient(lab.host(host).attach_socket)


def network(lab: Lab, cidr: str, *, gateway: str | None = None) -> str:
    name = f"la-{secrets.token_hex(3)}"
    spec: dict[str, Any] = {"cidr": cidr}
    if gateway:
        spec["gateway"] = gateway
    body = {
        "apiVersion": c.API_VERSION,
        "kind": c.OVERLAY_NETWORK,
        "metadata": {"name": name},
        "spec": spec,
    }
    kube_call(lab, lambda cl: cl.create(kube.path(c.GROUP, c.VERSION, c.OVERLAY_NETWORKS), body))
    return name


def owner(kind: str = "cni") -> dict[str, str]:
    return {"kind": kind, "id": secrets.token_hex(32)}


def attach(lab: Lab, host: int, net: str, who: dict[str, str], path: str, **extra: Any) -> Any:
    target = {"netns": {"path": path, "interface": "eth0"}}
    return api(lab, host).attach(network=net, owner=who, target=target, **extra)


def detach(lab: Lab, host: int, net: str, who: dict[str, str]) -> Any:
    return api(lab, host).detach(network=net, owner=who, interface="eth0")


def endpoints_of(lab: Lab, net: str) -> list[dict[str, Any]]:
    items, _ = kube_call(
        lab,
        lambda cl: cl.list(
            kube.path(c.GROUP, c.VERSION, c.ENDPOINTS), field_selector=f"spec.network={net}"
        ),
    )
    return list(items)


def claims_of(lab: Lab, net: str) -> list[str]:
    items, _ = kube_call(lab, lambda cl: cl.list(kube.path(c.GROUP, c.VERSION, c.IP_CLAIMS)))
    return [i["metadata"]["name"] for i in items if i["metadata"]["name"].startswith(f"{net}-")]


def host_ports(lab: Lab, host: int) -> set[str]:
    h = lab.host(host)
    return set(h.vsctl("list-ports", "br-voile").split()) | set(
        re.findall(r"^\d+: (vo\w+)@", h.exec("ip", "-o", "link").stdout, re.M)
    )


def ping(path: str, dst: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", Path(path).name, "ping", "-n", "-c", "3", "-W", "2", dst],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_attach_returns_the_address_and_the_container_pings_across_hosts(
    lab: Lab, netns: Any
) -> None:
    net = network(lab, "198.19.60.0/24", gateway="198.19.60.1")
    a, b = owner(), owner()
    status, first = attach(lab, 1, net, a, netns("a"), labels={c.LABEL_POD_NAME: "web"})
    assert status == 200, first
    assert first["prefixLength"] == 24 and first["gateway"] == "198.19.60.1"
    assert first["mtu"] == 1450 and first["interface"] == "eth0"
    assert first["mac"] == "0a:58:" + ":".join(f"{int(x):02x}" for x in first["ip"].split("."))
    assert first["hostInterface"] in host_ports(lab, 1)
    assert first["vtep"] == str(lab.host(1).address) and first["node"] == "host-1"
    status, second = attach(lab, 2, net, b, netns("b"))
    assert status == 200, second
    assert ping(first["netns"], second["ip"]).returncode == 0
    inside = subprocess.run(
        ["ip", "netns", "exec", Path(first["netns"]).name, "ip", "-o", "addr", "show", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{first['ip']}/24" in inside
    (ep,) = [
        e for e in endpoints_of(lab, net) if e["metadata"]["name"] == first["endpoint"]["name"]
    ]
    labels = ep["metadata"]["labels"]
    assert labels[c.LABEL_OWNER_KIND] == "cni" and labels[c.LABEL_POD_NAME] == "web"
    assert ep["metadata"]["annotations"][c.ANNOTATION_OWNER_ID] == a["id"]


def test_attach_twice_is_the_same_endpoint_and_detach_twice_succeeds(lab: Lab, netns: Any) -> None:
    net = network(lab, "198.19.61.0/24")
    who, path = owner(), netns("twice")
    s1, first = attach(lab, 1, net, who, path)
    s2, again = attach(lab, 1, net, who, path)
    assert (s1, s2) == (200, 200), (first, again)
    assert again["endpoint"] == first["endpoint"] and again["ip"] == first["ip"]
    assert len(endpoints_of(lab, net)) == 1 and len(claims_of(lab, net)) == 1
    port = first["hostInterface"]
    assert detach(lab, 1, net, who) == (200, {"deleted": True})
    assert detach(lab, 1, net, who) == (200, {"deleted": False})
    assert endpoints_of(lab, net) == [] and claims_of(lab, net) == []
    assert port not in host_ports(lab, 1)


def test_detach_after_the_namespace_is_gone_leaves_nothing(lab: Lab, netns: Any) -> None:
    net = network(lab, "198.19.62.0/24")
    who, path = owner(), netns("gone")
    status, done = attach(lab, 1, net, who, path)
    assert status == 200, done
    del_netns(Path(path).name)  # the runtime tore the sandbox down first
    assert detach(lab, 1, net, who) == (200, {"deleted": True})
    assert endpoints_of(lab, net) == [] and claims_of(lab, net) == []
    assert done["hostInterface"] not in host_ports(lab, 1)


def test_a_missing_network_is_refused_at_once_and_leaves_nothing(lab: Lab, netns: Any) -> None:
    started = time.monotonic()
    status, body = attach(lab, 1, "la-no-such-net", owner(), netns("x"), timeout=20)
    assert status == 404 and body["error"]["reason"] == "NetworkNotFound", body
    assert "la-no-such-net" in body["error"]["message"]
    assert time.monotonic() - started < 5
    assert endpoints_of(lab, "la-no-such-net") == []


def test_a_full_network_names_the_cause_and_leaves_nothing(lab: Lab, netns: Any) -> None:
    net = network(lab, "198.19.63.0/30")  # two usable addresses
    first = [attach(lab, 1, net, owner(), netns(f"f{i}")) for i in range(2)]
    assert [s for s, _ in first] == [200, 200], first
    started = time.monotonic()
    who = owner()
    status, body = attach(lab, 1, net, who, netns("f2"), timeout=20)
    assert status == 409 and body["error"]["reason"] == "PoolExhausted", body
    assert body["error"]["temporary"] is False
    assert time.monotonic() - started < 20
    names = {e["metadata"]["name"] for e in endpoints_of(lab, net)}
    assert names == {b["endpoint"]["name"] for _, b in first}, "the refused Endpoint is gone"
    assert len(claims_of(lab, net)) == 2


@pytest.mark.parametrize("path", ["/proc/1/ns/net", "/tmp/voile-not-a-netns-dir/x"])
def test_a_namespace_outside_the_allowed_directories_is_refused(lab: Lab, path: str) -> None:
    net = network(lab, "198.19.64.0/24")
    status, body = attach(lab, 1, net, owner(), path)
    assert status == 400 and body["error"]["reason"] == "NamespaceNotAllowed", body
    assert endpoints_of(lab, net) == []


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"{not json", "request"),
        (b"[1, 2]", "request"),
        (b'{"owner": {"kind": "cni", "id": "x"}}', "network"),
        (b'{"network": "n", "owner": {"kind": "cni", "id": "x"}, "target": {}}', "target"),
        (b'{"network": "n", "owner": {"kind": "pod", "id": "x"}, "target": {"handoff": {}}}',
         "owner.kind"),
        (b'{"network": "n", "owner": {"kind": "cni", "id": "x"}, "target": {"handoff": {}},'
         b' "ip": "300.1.1.1"}', "ip"),
        (b'{"network": "n", "owner": {"kind": "cni", "id": "x"}, "target": {"handoff": {}},'
         b' "color": "blue"}', "color"),
    ],
)  # fmt: skip
def test_malformed_requests_get_the_field_named(lab: Lab, raw: bytes, field: str) -> None:
    status, body = api(lab, 1).request("POST", "/v1/attach", raw=raw)
    assert status == 400, body
    assert body["error"]["reason"] == "InvalidRequest" and body["error"]["field"] == field


def test_status_says_synced_and_healthy(lab: Lab) -> None:
    status, body = api(lab, 2).status()
    assert status == 200 and body["ready"] is True, body
    assert body["datapath"] == {"kind": "ovs", "healthy": True, "reason": "Healthy", "message": ""}
    assert body["node"] == "host-2" and body["vtep"] == str(lab.host(2).address)


def as_nobody(code: str, *caps: str) -> subprocess.CompletedProcess[str]:
    """Run Python as uid 65534, with extra capabilities (e.g. dac_override to get past file
    permissions and reach the credential check itself)."""
    extra = [f"--inh-caps=+{','.join(caps)}", f"--ambient-caps=+{','.join(caps)}"] if caps else []
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *extra,
         "/usr/bin/python3", "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )  # fmt: skip


def test_only_root_may_use_the_socket(lab: Lab) -> None:
    sock = lab.host(1).attach_socket
    st = sock.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)
    request = (
        "import http.client, socket\n"
        "class C(http.client.HTTPConnection):\n"
        "    def connect(self):\n"
        "        self.sock = socket.socket(socket.AF_UNIX)\n"
        f"        self.sock.connect({str(sock)!r})\n"
        "c = C('localhost', timeout=10)\n"
        "try:\n"
        "    c.request('GET', '/v1/status')\n"
        "except PermissionError:\n"
        "    print('EACCES')\n"
        "else:\n"
        "    r = c.getresponse()\n"
        "    print(r.status, r.read().decode())\n"
    )
    # File permissions stop a plain non-root client ...
    assert as_nobody(request).stdout.strip() == "EACCES"
    # ... and one that gets past them is still refused by its credentials.
    past = as_nobody(request, "dac_override")
    status, _, body = past.stdout.partition(" ")
    assert status == "403" and '"Forbidden"' in body, past.stdout + past.stderr
