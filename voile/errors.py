"""Voile's exception tree. Appliers translate library errors into these, or into no-ops.

VoileError
 ├── ControlPlaneError      the development control plane failed to build, start or stop
 ├── ValidationError        a spec breaks a rule (raised by voile.api.model parsers)
 ├── PlumbingError          the agent cannot realize an endpoint (namespace missing, refused path)
 ├── DatapathError          Open vSwitch or the kernel refused an operation
 │    └── DatapathBusy      a daemon already has as many calls in flight as it may (not sent)
 └── LabError               `voile lab` could not do what was asked
"""

from __future__ import annotations


class VoileError(Exception):
    """Base of every error Voile raises on purpose."""


class ControlPlaneError(VoileError):
    """The development control plane (etcd + kube-apiserver) failed."""


class ValidationError(VoileError):
    """A spec breaks a rule. ``field`` names the offending field path, e.g. ``spec.cidr``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class PlumbingError(VoileError):
    """The agent cannot realize an endpoint; ``reason`` goes into the Ready condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class DatapathError(VoileError):
    """Open vSwitch or the kernel refused an operation the agent needs."""


class DatapathBusy(DatapathError):
    """A call was not sent: the daemon already has the most calls in flight that it may have
    (it is stuck or slow), so calls fail at once instead of piling up behind it."""


class LabError(VoileError):
    """`voile lab` could not do what was asked."""
