"""Voile node agent: one per host. It turns the Endpoints of its host into OVS ports, veths and
OpenFlow rules, learns the Endpoints of the same networks on other hosts, and reports back.

Layers (enforced by import-linter): ``main`` -> ``controller`` (watch and reconcile loops) ->
``appliers`` (OVS, OpenFlow, netlink, Kubernetes API) -> ``planning`` (pure desired state).
"""

from voile import __version__

__all__ = ["__version__"]
