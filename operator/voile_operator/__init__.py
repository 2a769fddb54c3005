"""Voile's operator: allocates VNIs, addresses and MACs for OverlayNetworks and Endpoints.

Layers (enforced by import-linter): ``main`` (CLI, leader election, kopf wiring) -> ``handlers``
(thin kopf handlers) -> ``appliers`` (Kubernetes API side effects) -> ``planning`` (pure decisions).
"""

from __future__ import annotations

from voile import __version__

__all__ = ["__version__"]
