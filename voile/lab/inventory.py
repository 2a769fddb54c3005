"""What a host holds that Voile could have made: an inventory of one network namespace (and its
Open vSwitch, its bpffs, its directories), to compare before an install and after an uninstall.

Observed with the host's own tools, as an administrator would look: ``ip -j`` (links with their
kind and alias, addresses, routes of every table, rules, IPv4 and IPv6), ``tc -j`` (qdiscs and
filters of every link: root, ingress, egress), ``nft`` and ``iptables-save``, ``sysctl``
(``net.ipv4.ip_forward``, every ``net.ipv4.conf.*`` and ``net.ipv6.conf.*``: forwarding,
rp_filter, the arp settings, disable_ipv6...), ``ss`` (listening sockets), ``ovs-vsctl`` (bridges,
ports, interfaces with their type, options, external_ids and other_config, and the
Open_vSwitch row's), ``ovs-ofctl`` (every bridge's flows), the pins under the bpffs, and every
file and directory under the given directories. Counters and other values that change on their
own (statistics, ofport numbers of a bridge made again, link state) are left out.

A failed observation raises ``LabError``: an inventory is never "nothing there" by mistake.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from voile.errors import LabError
from voile.lab.host import SimulatedHost, sh

SYSCTL_KEYS = r"^net\.(ipv4\.ip_forward$|ipv4\.conf\.|ipv6\.conf\.)"
# Values the kernel changes by itself.
SYSCTL_VOLATILE = ("stable_secret",)
ROUTE_FIELDS = ("type", "dst", "gateway", "dev", "table", "protocol", "scope", "prefsrc",
                "metric", "pref")  # fmt: skip
OVS_COLUMNS = {
    "Open_vSwitch": "external_ids,other_config",
    "Bridge": "name,datapath_type,fail_mode,external_ids,other_config,protocols",
    "Port": "name,external_ids,other_config,tag,trunks",
    "Interface": "name,type,options,external_ids,other_config,mtu_request",
}


@dataclasses.dataclass(frozen=True, slots=True)
class OvsAccess:
    """How to reach one host's Open vSwitch: its database and the bridges' management sockets
    (``<rundir>/<bridge>.mgmt``)."""

    db: str
    rundir: Path
    env: Mapping[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class Inventory:
    """Sections (``links``, ``routes``, ``ovs flows br-x``...) of sorted lines."""

    sections: Mapping[str, tuple[str, ...]]

    def diff(self, after: Inventory) -> str:
        """A readable unified diff per section that differs ('' when equal)."""
        out = []
        for name in sorted(set(self.sections) | set(after.sections)):
            old, new = self.sections.get(name, ()), after.sections.get(name, ())
            if old != new:
                lines = difflib.unified_diff(old, new, "before", "after", lineterm="", n=0)
                out.append(f"== {name}\n" + "\n".join(list(lines)[2:]))
        return "\n".join(out)


def _run(netns: str, *argv: str, env: Mapping[str, str] | None = None) -> str:
    proc = sh(
        "ip", "netns", "exec", netns, *argv, check=False, timeout=30, env=dict(env or os.environ)
    )
    if proc.returncode != 0:
        raise LabError(f"inventory: {' '.join(argv)} in {netns} failed: {proc.stderr.strip()}")
    return proc.stdout


def _json(netns: str, *argv: str) -> list[dict[str, Any]]:
    text = _run(netns, *argv)
    try:
        value = json.loads(text) if text.strip() else []
    except ValueError as exc:
        raise LabError(f"inventory: {' '.join(argv)} printed no JSON: {text[:200]!r}") from exc
    if not isinstance(value, list):
        raise LabError(f"inventory: {' '.join(argv)} printed {type(value).__name__}")
    return value


def _line(obj: Mapping[str, Any], fields: Sequence[str]) -> str:
    return " ".join(f"{k}={obj[k]}" for k in fields if obj.get(k) not in (None, "", []))


def _without(value: Any, keys: Sequence[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


def links(netns: str) -> tuple[list[str], list[str]]:
    """(link lines, link names)."""
    rows = _json(netns, "ip", "-d", "-j", "link", "show")
    if not any(r.get("ifname") == "lo" for r in rows):
        raise LabError(f"inventory: no loopback in {netns}: not a namespace's link list")
    lines = []
    for r in rows:
        kind = (r.get("linkinfo") or {}).get("info_kind", "")
        lines.append(
            _line(
                {**r, "kind": kind, "alias": r.get("ifalias", "")},
                ("ifname", "kind", "alias", "mtu", "master", "address", "link_type"),
            )
        )
    return lines, [str(r["ifname"]) for r in rows]


def addresses(netns: str) -> list[str]:
    lines = []
    for r in _json(netns, "ip", "-j", "addr", "show"):
        for a in r.get("addr_info", []):
            lines.append(f"{r['ifname']} {a['local']}/{a['prefixlen']} scope={a.get('scope')}")
    return lines


def routes(netns: str) -> list[str]:
    lines = []
    for family in ("-4", "-6"):
        for r in _json(netns, "ip", family, "-j", "route", "show", "table", "all"):
            lines.append(f"{family} " + _line(r, ROUTE_FIELDS))
    return lines


def rules(netns: str) -> list[str]:
    lines = []
    for family in ("-4", "-6"):
        for r in _json(netns, "ip", family, "-j", "rule", "show"):
            lines.append(f"{family} " + json.dumps(r, sort_keys=True))
    return lines


def traffic_control(netns: str, names: Sequence[str]) -> list[str]:
    """Qdiscs and filters (root, ingress, egress) of every link."""
    lines = []
    for name in names:
        for q in _json(netns, "tc", "-j", "qdisc", "show", "dev", name):
            lines.append(f"{name} qdisc " + _line(q, ("kind", "handle", "parent", "root")))
        for parent in ((), ("ingress",), ("egress",)):
            for found in _json(netns, "tc", "-j", "filter", "show", "dev", name, *parent):
                where = parent[0] if parent else "root"
                stable = _without(found, ("id", "tag"))  # a BPF program's, new on each load
                lines.append(f"{name} filter {where} " + json.dumps(stable, sort_keys=True))
    return lines


def firewall(netns: str) -> list[str]:
    lines = [f"nft {json.dumps(r, sort_keys=True)}"
             for r in json.loads(_run(netns, "nft", "-j", "list", "ruleset"))["nftables"]
             if "metainfo" not in r]  # fmt: skip
    for tool in ("iptables-save", "ip6tables-save"):
        lines += [
            f"{tool} {line}"
            for line in _run(netns, tool).splitlines()
            if line and not line.startswith("#") and not line.startswith(":")
        ]
    return lines


def sysctls(netns: str) -> list[str]:
    out = _run(netns, "sysctl", "-e", "-a", "-r", SYSCTL_KEYS)
    lines = [line for line in out.splitlines() if not line.split(" ")[0].endswith(SYSCTL_VOLATILE)]
    if not any(line.startswith("net.ipv4.ip_forward") for line in lines):
        raise LabError(f"inventory: sysctl printed no net.ipv4.ip_forward in {netns}")
    return lines


def listening(netns: str) -> list[str]:
    return [" ".join(line.split()[0:1] + line.split()[4:5])
            for line in _run(netns, "ss", "-H", "-l", "-t", "-u", "-n").splitlines()]  # fmt: skip


def ovs(netns: str, access: OvsAccess) -> dict[str, list[str]]:
    """OVSDB rows (the columns of OVS_COLUMNS) and every bridge's flows."""
    sections: dict[str, list[str]] = {}
    bridges: list[str] = []
    for table, columns in OVS_COLUMNS.items():
        text = _run(netns, "ovs-vsctl", f"--db={access.db}", "--format=json",
                    f"--columns={columns}", "list", table, env=access.env)  # fmt: skip
        doc = json.loads(text)
        names = doc["headings"]
        rows = [
            json.dumps(dict(zip(names, row, strict=True)), sort_keys=True) for row in doc["data"]
        ]
        sections[f"ovsdb {table}"] = rows
        if table == "Bridge":
            bridges = [str(dict(zip(names, row, strict=True))["name"]) for row in doc["data"]]
    for bridge in bridges:
        mgmt = f"unix:{access.rundir / (bridge + '.mgmt')}"
        text = _run(netns, "ovs-ofctl", "-O", "OpenFlow14", "--no-stats", "dump-flows", mgmt,
                    env=access.env)  # fmt: skip
        sections[f"ovs flows {bridge}"] = [line.strip() for line in text.splitlines()[1:]]
    return sections


def tree(root: Path) -> list[str]:
    """Every file and directory under ``root`` (relative), or that ``root`` is missing."""
    if not root.exists():
        return [f"{root}: missing"]
    if not root.is_dir():
        raise LabError(f"inventory: {root} is not a directory")
    return [f"{root}/"] + [
        f"{p.relative_to(root)}{'/' if p.is_dir() else ''}" for p in root.rglob("*")
    ]


def wait_addresses_settled(netns: str, *, timeout: float = 10.0) -> None:
    """Wait until no IPv6 address is tentative (in duplicate address detection): the kernel adds
    its local route only after, so a host just brought up would change under the inventory."""
    deadline = time.monotonic() + timeout
    while any(
        r.get("addr_info") for r in _json(netns, "ip", "-6", "-j", "addr", "show", "tentative")
    ):
        if time.monotonic() > deadline:
            raise LabError(f"inventory: IPv6 addresses of {netns} still tentative after {timeout}s")
        time.sleep(0.2)


def observe(
    netns: str,
    *,
    ovs_access: OvsAccess | None = None,
    bpffs: Path | None = None,
    directories: Sequence[Path] = (),
) -> Inventory:
    """The inventory of the host in namespace ``netns``. Raises LabError if any part of it
    cannot be observed."""
    wait_addresses_settled(netns)
    link_lines, names = links(netns)
    sections: dict[str, list[str]] = {
        "links": link_lines,
        "addresses": addresses(netns),
        "routes": routes(netns),
        "rules": rules(netns),
        "tc": traffic_control(netns, names),
        "firewall": firewall(netns),
        "sysctls": sysctls(netns),
        "listening sockets": listening(netns),
    }
    if ovs_access is not None:
        sections.update(ovs(netns, ovs_access))
    if bpffs is not None:
        if not bpffs.is_dir():
            raise LabError(f"inventory: no bpffs at {bpffs}")
        sections["bpf pins"] = tree(bpffs)
    for directory in directories:
        sections[f"files {directory}"] = tree(directory)
    return Inventory({name: tuple(sorted(lines)) for name, lines in sections.items()})


def of_host(host: SimulatedHost, directories: Sequence[Path] = ()) -> Inventory:
    """A simulated host's inventory: its namespace, its Open vSwitch (``ovs`` hosts), its bpffs
    (``ebpf`` hosts) and ``directories``."""
    access = (
        OvsAccess(db=host.ovsdb, rundir=host.directory, env=host.env)
        if host.datapath == "ovs"
        else None
    )
    bpffs = host.bpffs if host.datapath == "ebpf" else None
    return observe(host.namespace, ovs_access=access, bpffs=bpffs, directories=directories)
