"""Voile: overlay networks for containers over Open vSwitch and VXLAN, the Kubernetes way.

This shared package holds what both the operator (``voile_operator``) and the node agent
(``voile_agent``) need: the API model (``voile.api``), the error tree (``voile.errors``), the
user CLI (``voile.cli``) and the development control plane (``voile.controlplane``).
"""

__version__ = "0.1.0"
