"""The eBPF backend's host verbs on a real kernel, without a control plane: set-up is idempotent
and adopts its pins, health names what is missing (a pin, the tunnel device's program) and the
next set-up restores it, cleanup removes every pin, program and device it made and nothing else.
Runs the backend in a simulated eBPF host's namespace (``ip netns exec``), on that host's own
bpffs."""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from voile.lab.host import Fabric, SimulatedHost, run_id

SCRIPT = """
import asyncio, json, sys
from voile_agent.datapath.ebpf.backend import EbpfDatapath, EbpfSettings

async def main(step):
    vtep = dict(vtep_ip=sys.argv[3]) if len(sys.argv) > 3 else dict(vtep_interface="eth0")
    dp = EbpfDatapath(EbpfSettings(bpffs=sys.argv[2], **vtep))
    out = {}
    if step in ("setup", "setup-health"):
        out["vtep"] = str(await dp.ensure_host())
    if step != "cleanup":
        h = await dp.health()
        out["health"] = [h.healthy, h.reason, h.message]
    else:
        out["removed"] = await dp.cleanup()
    await dp.close()
    print(json.dumps(out))

asyncio.run(main(sys.argv[1]))
"""


@pytest.fixture
def host(tmp_path: Path) -> Iterator[SimulatedHost]:
    fabric = Fabric(tmp_path / "fabric", run_id(), ipaddress.IPv4Network("198.18.22.0/24"))
    try:
        yield fabric.host(1, datapath="ebpf").start()
    finally:
        fabric.stop()


def step(host: SimulatedHost, name: str, *extra: str) -> dict[str, object]:
    proc = host.exec(sys.executable, "-c", SCRIPT, name, str(host.bpffs), *extra, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_setup_health_repair_and_cleanup(host: SimulatedHost) -> None:
    first = step(host, "setup-health")
    assert first["vtep"] == "198.18.22.1" and first["health"] == [True, "Healthy", ""]
    pins = host.bpffs / "voile"
    progs = {p.name for p in (pins / "progs").iterdir()}
    assert progs == {"from_ep", "from_vxlan", "from_probe"}
    ids = host.exec("bpftool", "-j", "net", "show").stdout
    # A second set-up (a restarted agent) adopts the pins: the same programs stay attached.
    assert step(host, "setup-health")["health"] == [True, "Healthy", ""]
    assert host.exec("bpftool", "-j", "net", "show").stdout == ids

    # A pin removed by hand, the tunnel device's program detached: health names both.
    (pins / "maps" / "voile_arp").unlink()
    host.exec("tc", "qdisc", "del", "dev", "voile-vxlan", "clsact")
    healthy, reason, message = step(host, "health")["health"]  # type: ignore[misc]
    assert not healthy and reason == "DatapathUnavailable"
    assert "maps/voile_arp" in message and "from_vxlan not attached to voile-vxlan" in message
    assert step(host, "setup-health")["health"] == [True, "Healthy", ""]  # the next pass

    # Cleanup: no pin, no device, no program left; the underlay untouched; idempotent.
    removed = step(host, "cleanup")["removed"]
    # voile-vxlan and the probe veth pair (deleting one end deletes both).
    assert removed["devices"] == 2 and removed["pins"] > 0  # type: ignore[index]
    assert not pins.exists()
    links = host.exec("ip", "-o", "link", "show").stdout
    assert "voile-" not in "".join(line.split(":")[1] for line in links.splitlines())
    assert json.loads(host.exec("bpftool", "-j", "net", "show").stdout)[0]["tc"] == []
    assert "198.18.22.1/24" in host.exec("ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert step(host, "cleanup")["removed"] == {"links": 0, "devices": 0, "pins": 0}
    healthy, _, message = step(host, "health")["health"]  # type: ignore[misc]
    assert not healthy and "progs/from_ep" in message

    # With --vtep-ip the VXLAN device's MTU comes from the interface that holds the address
    # (a jumbo underlay here: 9000 - 50).
    host.exec("ip", "link", "set", "eth0", "mtu", "9000")
    assert step(host, "setup", "198.18.22.1")["vtep"] == "198.18.22.1"
    assert " mtu 8950 " in host.exec("ip", "link", "show", "voile-vxlan").stdout
    step(host, "cleanup")
