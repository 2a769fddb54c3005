"""OVSDB through ovsdbapp: the integration bridge, the tunnel port, endpoint ports, and the
underlay bridge of the netdev datapath.

One ``OvsdbIdl`` per process (ovsdbapp runs its own connection thread). Every method here is
synchronous and blocking; the backend calls them with ``asyncio.to_thread``. Each domain
operation is one OVSDB transaction (port + interface type + options + external_ids together), so
a crash never leaves a half-made port. Every verb is idempotent: it reads first, writes only what
differs, and treats "already there" / "already gone" as success. Nothing without the Voile owner
tag is ever deleted.

Reads fail loudly. ovsdbapp serves reads from its in-memory replica, but on its one connection
thread: while a write waits for a server that does not answer, a read queues behind it and times
out. Every such failure, and a replica that has never been filled, raises ``DatapathError``; it
is never taken for "no ports", which would make the caller delete flows of live endpoints.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from ovsdbapp.backend.ovs_idl import connection as ovs_connection
from ovsdbapp.schema.open_vswitch import impl_idl

from voile.errors import DatapathError
from voile_agent.datapath.ovs.model import (
    EXT_ROLE,
    OWNER_KEY,
    OWNER_VALUE,
    BridgePort,
    DatapathType,
    PortKind,
    PortRole,
    endpoint_ids,
    port_kind,
)
from voile_agent.planning.model import Attachment

log = logging.getLogger(__name__)

FLOW_RESTORE_WAIT = "flow-restore-wait"

_lock = threading.Lock()
_apis: dict[str, Any] = {}


def _owned(ids: Mapping[str, str]) -> bool:
    return ids.get(OWNER_KEY) == OWNER_VALUE


def _tags(role: PortRole, **extra: str) -> dict[str, str]:
    return {OWNER_KEY: OWNER_VALUE, EXT_ROLE: role.value, **extra}


def _scalar(value: Any) -> Any:
    """The python IDL returns optional columns as [] or [x]."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


class Ovs:
    """The OVSDB side of one host. Construct once per process; safe to call from threads."""

    def __init__(self, connection: str, *, timeout: float = 10.0) -> None:
        self.connection = connection
        self.timeout = timeout

    @property
    def api(self) -> Any:
        """The process-wide ovsdbapp API for this connection string (connected on first use)."""
        with _lock:
            api = _apis.get(self.connection)
            if api is None:
                try:
                    idl = ovs_connection.OvsdbIdl.from_server(self.connection, "Open_vSwitch")
                    conn = ovs_connection.Connection(idl=idl, timeout=self.timeout)
                    # ovsdbapp keeps the connection in a class attribute (one per Backend
                    # class): a subclass per OVSDB keeps two servers in one process (tests,
                    # the lab) from sharing the first one's connection.
                    backend = type(
                        f"OvsdbIdl{len(_apis)}", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None}
                    )
                    api = backend(conn)
                except Exception as exc:
                    raise DatapathError(
                        f"cannot connect to OVSDB at {self.connection}: {exc}"
                    ) from exc
                _apis[self.connection] = api
            return api

    def _read(self, command: Any, what: str) -> Any:
        """Run a read command; any failure is a DatapathError naming what was read."""
        try:
            idl = self.api.ovsdb_connection.idl
            if not idl.has_ever_connected():
                raise DatapathError(f"OVSDB at {self.connection} has not answered yet")
            return command.execute(check_error=True)
        except DatapathError:
            raise
        except Exception as exc:
            raise DatapathError(
                f"cannot read {what} from OVSDB at {self.connection}: {exc}"
            ) from exc

    def _rows(
        self, table: str, columns: list[str], records: list[str] | None = None
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._read(
            self.api.db_list(table, records=records, columns=columns, if_exists=True), table
        )
        return rows

    def _commit(self, *commands: Any) -> None:
        try:
            with self.api.transaction(check_error=True) as txn:
                for cmd in commands:
                    txn.add(cmd)
        except Exception as exc:
            raise DatapathError(f"OVSDB transaction failed: {exc}") from exc

    # -- the switch ----------------------------------------------------------------------------

    def flow_restore_wait(self) -> bool:
        """Whether ``other_config:flow-restore-wait`` is true: ovs-vswitchd then forwards
        nothing until its flows are restored (set before it restarts; the agent clears it
        once it has re-installed its flows)."""
        rows = self._rows("Open_vSwitch", ["_uuid", "other_config"])
        return any(dict(r["other_config"]).get(FLOW_RESTORE_WAIT) == "true" for r in rows)

    def clear_flow_restore_wait(self) -> bool:
        """Remove ``other_config:flow-restore-wait``. Idempotent: False when it was not set."""
        rows = self._rows("Open_vSwitch", ["_uuid", "other_config"])
        rows = [r for r in rows if FLOW_RESTORE_WAIT in dict(r["other_config"])]
        if not rows:
            return False
        self._commit(
            *(
                self.api.db_remove("Open_vSwitch", r["_uuid"], "other_config", FLOW_RESTORE_WAIT)
                for r in rows
            )
        )
        return True

    # -- bridges -------------------------------------------------------------------------------

    def bridge(self, name: str) -> dict[str, Any] | None:
        rows = self._rows(
            "Bridge", ["name", "datapath_type", "fail_mode", "external_ids", "other_config"], [name]
        )
        return rows[0] if rows else None

    def ensure_bridge(
        self,
        name: str,
        datapath: DatapathType,
        *,
        role: PortRole,
        secure: bool,
        extra_ids: Mapping[str, str] | None = None,
        hwaddr: str | None = None,
    ) -> bool:
        """The bridge exists with this datapath type, fail mode and tags (and, given ``hwaddr``,
        that MAC). Idempotent: returns False (and writes nothing) when it already is so. A bridge
        of that name that is not ours is refused rather than adopted."""
        ids = _tags(role, **(extra_ids or {}))
        fail_mode = "secure" if secure else "standalone"
        row = self.bridge(name)
        if row is not None:
            have_ids = dict(row["external_ids"])
            if not _owned(have_ids):
                raise DatapathError(f"bridge {name} exists and is not Voile's; refusing to use it")
            if (
                row["datapath_type"] == datapath.value
                and _scalar(row["fail_mode"]) == fail_mode
                and all(have_ids.get(k) == v for k, v in ids.items())
                and (hwaddr is None or dict(row["other_config"]).get("hwaddr") == hwaddr)
            ):
                return False
        api = self.api
        commands = [
            api.add_br(name, may_exist=True, datapath_type=datapath.value),
            api.db_set("Bridge", name, ("fail_mode", fail_mode), if_exists=False),
            api.db_set("Bridge", name, ("external_ids", ids), if_exists=False),
            api.db_set("Interface", name, ("external_ids", _tags(role)), if_exists=False),
        ]
        if hwaddr is not None:
            commands.append(
                api.db_set("Bridge", name, ("other_config", {"hwaddr": hwaddr}), if_exists=False)
            )
        self._commit(*commands)
        log.info("bridge ensured name=%s datapath=%s fail_mode=%s", name, datapath.value, fail_mode)
        return True

    def delete_bridge(self, name: str) -> bool:
        """Delete a bridge only if it carries the Voile owner tag. Idempotent."""
        row = self.bridge(name)
        if row is None or not _owned(dict(row["external_ids"])):
            return False
        self._commit(self.api.del_br(name, if_exists=True))
        log.info("bridge deleted name=%s", name)
        return True

    # -- ports ---------------------------------------------------------------------------------

    def ports(self, bridge: str) -> list[BridgePort]:
        """Every port of the bridge with its interface's ofport and external_ids; [] when the
        bridge does not exist. Raises DatapathError when OVSDB cannot be read."""
        if self.bridge(bridge) is None:
            return []
        names = list(self._read(self.api.list_ports(bridge), f"the ports of {bridge}"))
        if not names:
            return []
        rows = self._rows("Interface", ["name", "ofport", "external_ids"], names)
        result = []
        for row in rows:
            ofport = _scalar(row["ofport"])
            result.append(
                BridgePort(
                    name=row["name"],
                    ofport=ofport if isinstance(ofport, int) and ofport > 0 else None,
                    external_ids=tuple(sorted(dict(row["external_ids"]).items())),
                )
            )
        return sorted(result, key=lambda p: p.name)

    def ensure_tunnel_port(self, bridge: str, name: str, *, local_ip: str, dst_port: int) -> bool:
        """The single flow-based VXLAN port (remote_ip=flow, key=flow). Idempotent."""
        options = {
            "remote_ip": "flow",
            "key": "flow",
            "local_ip": local_ip,
            "dst_port": str(dst_port),
        }
        ids = _tags(PortRole.TUNNEL)
        rows = self._rows("Interface", ["name", "type", "options", "external_ids"], [name])
        if rows:
            row = rows[0]
            if (
                row["type"] == "vxlan"
                and dict(row["options"]) == options
                and dict(row["external_ids"]) == ids
            ):
                return False
            if not _owned(dict(row["external_ids"])):
                raise DatapathError(f"interface {name} exists and is not Voile's")
        api = self.api
        self._commit(
            api.add_port(bridge, name, may_exist=True),
            api.db_set(
                "Interface",
                name,
                ("type", "vxlan"),
                ("options", options),
                ("external_ids", ids),
                if_exists=False,
            ),
            api.db_set("Port", name, ("external_ids", ids), if_exists=False),
        )
        log.info("tunnel port ensured name=%s local_ip=%s dst_port=%s", name, local_ip, dst_port)
        return True

    def ensure_endpoint_port(self, bridge: str, att: Attachment) -> bool:
        """The endpoint's port with its tags (and, for host targets, an internal interface with
        the endpoint's MAC and MTU), in one transaction. Idempotent."""
        ids = endpoint_ids(att)
        internal = port_kind(att) == PortKind.INTERNAL
        iface: list[tuple[str, Any]] = [("external_ids", ids)]
        if internal:
            iface += [("type", "internal"), ("mac", att.mac), ("mtu_request", att.mtu)]
        rows = self._rows(
            "Interface", ["name", "type", "external_ids", "mac", "mtu_request"], [att.port]
        )
        if rows:
            row = rows[0]
            have = dict(row["external_ids"])
            if not _owned(have):
                raise DatapathError(f"interface {att.port} exists and is not Voile's")
            same = have == ids
            if internal:
                same = (
                    same
                    and row["type"] == "internal"
                    and _scalar(row["mac"]) == att.mac
                    and _scalar(row["mtu_request"]) == att.mtu
                )
            if same and self._port_on(bridge, att.port):
                return False
        api = self.api
        self._commit(
            api.add_port(bridge, att.port, may_exist=True),
            api.db_set("Interface", att.port, *iface, if_exists=False),
            api.db_set("Port", att.port, ("external_ids", ids), if_exists=False),
        )
        log.info("endpoint port ensured port=%s endpoint=%s", att.port, att.key)
        return True

    def _port_on(self, bridge: str, name: str) -> bool:
        if self.bridge(bridge) is None:
            return False
        return name in self._read(self.api.list_ports(bridge), f"the ports of {bridge}")

    def delete_port(self, name: str) -> bool:
        """Delete a port only if its interface carries the Voile owner tag. Idempotent."""
        rows = self._rows("Interface", ["name", "external_ids"], [name])
        if not rows or not _owned(dict(rows[0]["external_ids"])):
            return False
        self._commit(self.api.del_port(name, if_exists=True))
        log.info("port deleted port=%s", name)
        return True

    def ensure_internal_port(self, bridge: str, name: str, *, role: PortRole, mtu: int) -> bool:
        """An internal port of the bridge with our tags and this MTU, in one transaction.
        Idempotent; an interface of that name that is not ours is refused."""
        ids = _tags(role)
        rows = self._rows("Interface", ["name", "type", "external_ids", "mtu_request"], [name])
        if rows:
            row = rows[0]
            if not _owned(dict(row["external_ids"])):
                raise DatapathError(f"interface {name} exists and is not Voile's")
            if (
                row["type"] == "internal"
                and dict(row["external_ids"]) == ids
                and _scalar(row["mtu_request"]) == mtu
                and self._port_on(bridge, name)
            ):
                return False
        api = self.api
        self._commit(
            api.add_port(bridge, name, may_exist=True),
            api.db_set(
                "Interface",
                name,
                ("type", "internal"),
                ("external_ids", ids),
                ("mtu_request", mtu),
                if_exists=False,
            ),
            api.db_set("Port", name, ("external_ids", ids), if_exists=False),
        )
        log.info("internal port ensured port=%s role=%s", name, role.value)
        return True

    def ensure_underlay_port(self, bridge: str, interface: str) -> bool:
        """Attach the underlay interface to the underlay bridge (netdev datapath). Idempotent."""
        if self._port_on(bridge, interface):
            return False
        ids = _tags(PortRole.UNDERLAY)
        api = self.api
        self._commit(
            api.add_port(bridge, interface, may_exist=True),
            api.db_set("Port", interface, ("external_ids", ids), if_exists=False),
        )
        log.info("underlay interface attached bridge=%s interface=%s", bridge, interface)
        return True

    def set_mtu_request(self, interface: str, mtu: int) -> None:
        rows = self._rows("Interface", ["name", "mtu_request"], [interface])
        if rows and _scalar(rows[0]["mtu_request"]) == mtu:
            return
        self._commit(self.api.db_set("Interface", interface, ("mtu_request", mtu), if_exists=False))

    def wait_ports(
        self, bridge: str, names: set[str], *, timeout: float = 10.0
    ) -> list[BridgePort]:
        """The bridge's ports, waiting (bounded) until each named one has an OpenFlow port
        number; what is still missing then is reported by the caller. Read-only."""
        deadline = time.monotonic() + timeout
        while True:
            ports = self.ports(bridge)
            numbered = {p.name for p in ports if p.ofport is not None}
            if names <= numbered or time.monotonic() > deadline:
                return ports
            time.sleep(0.05)
