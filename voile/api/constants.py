"""Names shared by every part of Voile. Changing one is an API change."""

from __future__ import annotations

import enum

GROUP = "voile.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Kinds and their plurals (the REST resource names).
OVERLAY_NETWORK = "OverlayNetwork"
OVERLAY_NETWORKS = "overlaynetworks"
ENDPOINT = "Endpoint"
ENDPOINTS = "endpoints"
IP_CLAIM = "IPClaim"
IP_CLAIMS = "ipclaims"
VNI_CLAIM = "VNIClaim"
VNI_CLAIMS = "vniclaims"

# Finalizers: the agent's is removed once the host no longer carries the endpoint; the operator's
# once the address claim is released. The operator waits for the agent's before releasing.
OPERATOR_FINALIZER = f"{GROUP}/operator"
AGENT_FINALIZER = f"{GROUP}/agent"
# kopf's own finalizer, on OverlayNetworks only (its delete handler). Not voile.dev/operator: kopf
# strips its finalizer from every object without a delete handler, and Endpoints carry ours.
KOPF_FINALIZER = f"{GROUP}/kopf"

# Labels (values must be valid label values: network names are DNS labels, <= 63 characters).
LABEL_NETWORK = f"{GROUP}/network"
LABEL_ENDPOINT_UID = f"{GROUP}/endpoint-uid"
LABEL_ENDPOINT_NAMESPACE = f"{GROUP}/endpoint-namespace"
LABEL_ENDPOINT_NAME = f"{GROUP}/endpoint-name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# Endpoints made through an agent's local attach API (CNI, Docker, the lab): who owns them.
LABEL_OWNER_KIND = f"{GROUP}/owner-kind"  # cni | docker | lab | api
LABEL_OWNER = f"{GROUP}/owner"  # a hash of the owner id (ids can exceed 63 characters)
LABEL_POD_NAMESPACE = f"{GROUP}/pod-namespace"
LABEL_POD_NAME = f"{GROUP}/pod-name"
ANNOTATION_OWNER_ID = f"{GROUP}/owner-id"  # the full owner id (a container id)
ANNOTATION_INTERFACE = f"{GROUP}/interface"  # the runtime's interface name (CNI_IFNAME)
# Endpoints of Docker containers: the Docker endpoint and network they were created for.
ANNOTATION_DOCKER_ENDPOINT = f"{GROUP}/docker-endpoint"
ANNOTATION_DOCKER_NETWORK = f"{GROUP}/docker-network"
# On a Pod: the OverlayNetwork its primary interface joins, when the node's conflist lets Pods
# choose (podNetworkAnnotation; docs/cni.md). Read by the agent, never by the CNI plugin.
ANNOTATION_POD_NETWORK = f"{GROUP}/network"
MANAGED_BY = "voile"

# Agent heartbeats: one coordination.k8s.io Lease per host in the Voile namespace.
DEFAULT_NAMESPACE = "voile-system"
AGENT_LEASE_PREFIX = "voile-agent-"
ANNOTATION_VTEP = f"{GROUP}/vtep"
ANNOTATION_DATAPATH = f"{GROUP}/datapath"  # the agent's datapath backend: ovs | ebpf | null
ANNOTATION_PROBES = f"{GROUP}/probes"  # the agent's data-path probe report (JSON)
# The node-level DatapathHealthy condition of the agent's host (JSON: status, reason, since).
ANNOTATION_DATAPATH_HEALTH = f"{GROUP}/datapath-health"
OPERATOR_LEASE = "voile-operator"

# Data path constants.
VXLAN_OVERHEAD_IPV4 = 50  # outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14)
DEFAULT_UNDERLAY_MTU = 1500
DEFAULT_VXLAN_PORT = 4789
MIN_VNI, MAX_VNI = 1, 16_777_215
MIN_MTU, MAX_MTU = 576, 9000
DEFAULT_INTERFACE = "eth0"


class ConditionType(str, enum.Enum):
    READY = "Ready"
    ALLOCATED = "Allocated"
    RECONCILING = "Reconciling"  # kstatus: work in progress
    STALLED = "Stalled"  # kstatus: cannot progress without a change
    VNI_ALLOCATED = "VNIAllocated"


class ConditionStatus(str, enum.Enum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(str, enum.Enum):
    """CamelCase reasons shown in conditions. Each names one cause a user can act on."""

    ALLOCATED = "Allocated"
    READY = "Ready"
    PENDING = "Pending"
    NETWORK_NOT_FOUND = "NetworkNotFound"
    NETWORK_NOT_READY = "NetworkNotReady"
    NETWORK_DELETING = "NetworkDeleting"
    ADDRESS_TAKEN = "AddressTaken"
    ADDRESS_EXCLUDED = "AddressExcluded"
    ADDRESS_OUTSIDE_CIDR = "AddressOutsideCIDR"
    ADDRESS_RESERVED = "AddressReserved"  # network, broadcast or gateway address
    POOL_EXHAUSTED = "PoolExhausted"
    VNI_CONFLICT = "VNIConflict"
    VNI_EXHAUSTED = "VNIExhausted"
    CIDR_OVERLAP = "CIDROverlap"
    INVALID_SPEC = "InvalidSpec"
    ENDPOINTS_REMAIN = "EndpointsRemain"
    NAMESPACE_NOT_FOUND = "NamespaceNotFound"
    NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed"
    PLUMBING_FAILED = "PlumbingFailed"
    WAITING_FOR_ALLOCATION = "WaitingForAllocation"
    AGENT_GONE = "AgentGone"
    DATAPATH_UNAVAILABLE = "DatapathUnavailable"
    DATAPATH_RESTARTED = "DatapathRestarted"
    NODE_LOST = "NodeLost"  # the node's agent stopped renewing its Lease (operator's verdict)
