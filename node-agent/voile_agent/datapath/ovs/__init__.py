"""The Open vSwitch backend: one integration bridge with one flow-based VXLAN port, OpenFlow
rules rendered from the neutral plan and applied by cookie diff in atomic bundles, and, for the
userspace (netdev) datapath, the underlay bridge and the tunnel neighbour cache."""

from voile_agent.datapath.ovs.backend import OvsDatapath, OvsSettings

__all__ = ["OvsDatapath", "OvsSettings"]
