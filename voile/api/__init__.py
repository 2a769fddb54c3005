"""The API model shared by operator and agent: pure, no Kubernetes client, no I/O.

Raw API dicts are parsed once, at the edge, into the frozen dataclasses of ``voile.api.model``;
``voile.api.constants`` names the group, kinds, labels, finalizers and condition types.
"""
