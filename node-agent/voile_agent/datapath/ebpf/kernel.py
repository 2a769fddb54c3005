"""The kernel objects of the eBPF datapath: the bpffs and its pins, the VXLAN device in external
(collect_md) mode, the probe veth, clsact qdiscs and tc filters.

Blocking; the backend runs it with ``asyncio.to_thread``. Loading uses ``bpftool prog loadall``
(libbpf relocates the object and creates and pins its maps), attaching ``tc filter replace ...
bpf da object-pinned`` (one fixed pref/handle, so a replace is idempotent), and reading what
is attached ``bpftool -j net show`` (one call for every device of the namespace). Devices the
agent makes carry the alias ``voile:datapath``; only those are ever deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from voile.errors import DatapathError
from voile_agent.planning.model import IFALIAS_PREFIX

log = logging.getLogger(__name__)

BPF_FS_MAGIC = 0xCAFE4A11
DEVICE_ALIAS = f"{IFALIAS_PREFIX}datapath"
PROGRAMS = ("from_ep", "from_vxlan", "from_probe")
FILTER_PREF = "49152"
FILTER_HANDLE = "0x5601"


def run(*argv: str, timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatapathError(f"{' '.join(argv[:3])}: {exc}") from exc
    if check and proc.returncode != 0:
        raise DatapathError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-1500:]}")
    return proc


# -- bpffs and pins ------------------------------------------------------------------------------


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]


def is_bpffs(path: str) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = _Statfs()
    if libc.statfs(path.encode(), ctypes.byref(buf)) != 0:
        return False
    return bool(buf.f_type & 0xFFFFFFFF == BPF_FS_MAGIC)


def ensure_bpffs(path: str) -> None:
    """A bpffs at ``path`` (mounted here when there is none). The pins must outlive the agent,
    so a bpffs made inside a private mount namespace (``ip netns exec``) is refused: the caller
    mounts it where the host sees it (the lab does, per simulated host; the chart mounts the
    node's /sys/fs/bpf)."""
    if is_bpffs(path):
        return
    Path(path).mkdir(parents=True, exist_ok=True)
    proc = run("mount", "-t", "bpf", "bpf", path, check=False)
    if proc.returncode != 0 or not is_bpffs(path):
        raise DatapathError(
            f"no bpffs at {path} and none can be mounted there ({proc.stderr.strip()}): mount "
            "one (mount -t bpf bpf <dir>, needs CAP_SYS_ADMIN) or run with --datapath ovs"
        )
    log.warning("bpffs mounted path=%s (pins live only as long as this mount)", path)


def pins_present(pin_dir: Path, maps: tuple[str, ...]) -> list[str]:
    """The pins that are missing (programs and maps)."""
    missing = [f"progs/{p}" for p in PROGRAMS if not (pin_dir / "progs" / p).exists()]
    missing += [f"maps/{m}" for m in maps if not (pin_dir / "maps" / m).exists()]
    return missing


def remove_pins(pin_dir: Path) -> int:
    """Unpin every program and map under ``pin_dir`` (ours by construction). Idempotent."""
    removed = 0
    for sub in ("progs", "maps"):
        d = pin_dir / sub
        if not d.is_dir():
            continue
        for entry in d.iterdir():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed += 1
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        pin_dir.rmdir()
    return removed


def load(obj: Path, pin_dir: Path) -> None:
    """Load every program of ``obj`` and pin programs and maps under ``pin_dir``."""
    remove_pins(pin_dir)
    pin_dir.mkdir(parents=True, exist_ok=True)
    if shutil.which("bpftool") is None:
        raise DatapathError("bpftool is not installed (Debian package bpftool)")
    run(
        "bpftool", "prog", "loadall", str(obj), str(pin_dir / "progs"),
        "type", "classifier", "pinmaps", str(pin_dir / "maps"),
        timeout=60,
    )  # fmt: skip
    log.info("bpf programs loaded object=%s pins=%s", obj, pin_dir)


# -- links ---------------------------------------------------------------------------------------


def links() -> dict[str, tuple[int, str]]:
    """Every link of this namespace: name -> (ifindex, alias). By ``ip -j link show``: iproute2
    decodes a dump of 400 links in a few milliseconds, pyroute2 took 100-300 ms (a pass and
    every attachment read it)."""
    proc = run("ip", "-j", "link", "show")
    try:
        data = json.loads(proc.stdout or "[]")
        return {
            str(link["ifname"]): (int(link["ifindex"]), str(link.get("ifalias") or ""))
            for link in data
        }
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DatapathError(f"ip -j link show: unreadable output: {exc}") from exc


def link_index(name: str) -> int | None:
    """The ifindex of one link (None: there is none by that name), without a dump."""
    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
    except (NetlinkError, OSError) as exc:
        raise DatapathError(f"cannot look up link {name}: {exc}") from exc
    return int(found[0]) if found else None


def mtu_of_address(address: str) -> int | None:
    """The MTU of the interface that holds ``address`` (the VTEP given as --vtep-ip), None when
    no interface of this namespace has it."""
    try:
        with IPRoute() as ipr:
            for addr in ipr.get_addr(family=2):
                if addr.get_attr("IFA_ADDRESS") == address:
                    link = ipr.get_links(addr["index"])[0]
                    return int(link.get_attr("IFLA_MTU"))
    except (NetlinkError, OSError) as exc:
        raise DatapathError(f"cannot read addresses: {exc}") from exc
    return None


def _set_up(name: str, *, mtu: int | None = None) -> None:
    argv = ["ip", "link", "set", "dev", name, "alias", DEVICE_ALIAS]
    if mtu:
        argv += ["mtu", str(mtu)]
    run(*argv, "up")
    path = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
    if os.path.exists(path):
        with open(path, "w", encoding="ascii") as f:
            f.write("1")


def _refuse_foreign(name: str, have: dict[str, tuple[int, str]]) -> bool:
    """True when ``name`` exists and is ours; raises when it exists and is not."""
    if name not in have:
        return False
    if have[name][1] != DEVICE_ALIAS:
        raise DatapathError(f"{name} exists and is not Voile's (alias {have[name][1]!r})")
    return True


def ensure_vxlan(name: str, *, port: int, mtu: int | None) -> int:
    """One VXLAN device in external (collect_md) mode: the programs set the VNI and remote VTEP
    of each packet (bpf_skb_set_tunnel_key) and read them on receive. Idempotent."""
    if not _refuse_foreign(name, links()):
        run(
            "ip", "link", "add", name, "type", "vxlan", "external", "dstport", str(port),
            "nolearning",
        )  # fmt: skip
        log.info("vxlan device created name=%s port=%d", name, port)
    _set_up(name, mtu=mtu)
    return links()[name][0]


def ensure_probe_pair(agent_end: str, datapath_end: str, *, mtu: int) -> tuple[int, int]:
    """The probe port: the agent sends probes on ``agent_end``; ``from_probe`` on
    ``datapath_end``'s ingress puts them into the tunnel, replies come back the other way.
    Idempotent."""
    have = links()
    if not (_refuse_foreign(agent_end, have) and _refuse_foreign(datapath_end, have)):
        for name in (agent_end, datapath_end):
            if name in have and have[name][1] == DEVICE_ALIAS:
                run("ip", "link", "del", name, check=False)
        run("ip", "link", "add", agent_end, "type", "veth", "peer", "name", datapath_end)
    for name in (agent_end, datapath_end):
        _set_up(name, mtu=mtu)
    now = links()
    return now[agent_end][0], now[datapath_end][0]


def delete_device(name: str) -> bool:
    """Delete a device of ours. Idempotent: False when none was there."""
    have = links()
    if name not in have or have[name][1] != DEVICE_ALIAS:
        return False
    run("ip", "link", "del", name)
    log.info("device deleted name=%s", name)
    return True


# -- tc ------------------------------------------------------------------------------------------


def attached() -> dict[int, int]:
    """ifindex -> id of the program on its clsact ingress, for every device of the namespace."""
    proc = run("bpftool", "-j", "net", "show")
    try:
        data = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError as exc:
        raise DatapathError(f"bpftool net show: unreadable output: {exc}") from exc
    result = {}
    for section in data:
        for entry in section.get("tc", []):
            if entry.get("kind") == "clsact/ingress" and "id" in entry:
                result[int(entry["ifindex"])] = int(entry["id"])
    return result


def attach(device: str, program: Path) -> None:
    """``program`` on ``device``'s clsact ingress (the qdisc made when missing). Idempotent:
    the filter of our fixed pref and handle is replaced in place."""
    qdiscs = run("tc", "qdisc", "show", "dev", device).stdout
    if "clsact" not in qdiscs:
        run("tc", "qdisc", "add", "dev", device, "clsact")
    run(
        "tc", "filter", "replace", "dev", device, "ingress", "pref", FILTER_PREF,
        "handle", FILTER_HANDLE, "bpf", "da", "object-pinned", str(program),
    )  # fmt: skip


def detach_clsact(device: str) -> bool:
    """Remove the clsact qdisc (and with it our filters) of a device. Idempotent."""
    proc = run("tc", "qdisc", "del", "dev", device, "clsact", check=False)
    return proc.returncode == 0


def text(*argv: str) -> str:
    """A tool's output for the dump; an error is said in the text."""
    try:
        proc = run(*argv, check=False, timeout=10)
    except DatapathError as exc:
        return f"error: {exc}"
    return proc.stdout if proc.returncode == 0 else f"error: {proc.stderr.strip()}"


def set_tx_offload(interface: str, netns: str | None, *, on: bool) -> None:
    cmd = ["ethtool", "-K", interface, "tx", "on" if on else "off"]
    if netns:
        cmd = ["nsenter", f"--net={netns}", *cmd]
    run(*cmd)
