#!/usr/bin/env bash
# `make lab`: a 3-host Voile, the example networks, containers across hosts, pings, the status table.
# Everything stays in 198.18.0.0/15, inside namespaces the lab creates. `voile lab down` removes it all.
set -euo pipefail
cd "$(dirname "$0")/.."
voile=.venv/bin/voile
hosts="${LAB_HOSTS:-3}"

exports="$($voile lab up --hosts "$hosts")"
eval "$exports"

echo "==> kubectl apply: the example networks (blue, and tenant-a/tenant-b with the same CIDR)"
kubectl apply -f examples/01-basic-network/network.yaml -f examples/03-overlapping-cidrs/networks.yaml

echo "==> attaching containers across hosts"
web=$($voile lab attach host-1 web --network blue | tail -n1)
db=$($voile lab attach host-2 db --network blue | tail -n1)
last="host-$hosts"
cache=$($voile lab attach "$last" cache --network blue | tail -n1)
a=$($voile lab attach host-1 a1 --network tenant-a --ip 198.18.3.10 | tail -n1)
b=$($voile lab attach host-2 b1 --network tenant-b --ip 198.18.3.10 | tail -n1)
a2=$($voile lab attach "$last" a2 --network tenant-a | tail -n1)
echo "web=$web db=$db cache=$cache a1=$a b1=$b a2=$a2"

echo "==> cross-host pings through the overlay"
$voile lab exec web -- ping -c 3 -W 2 "$db"
$voile lab exec db -- ping -c 3 -W 2 "$cache"
$voile lab exec a2 -- ping -c 3 -W 2 "$a"
echo "==> tenant-a and tenant-b share 198.18.3.0/24 but not a wire: b1 answers only its own network"
$voile lab exec b1 -- ping -c 2 -W 1 "$a2" && { echo "isolation broken" >&2; exit 1; } || true

echo "==> voile lab status"
$voile lab status
echo
echo "The lab is up. Use it with:"
echo "  $exports"
echo "  kubectl get overlaynetworks; kubectl get vep -A"
echo "  .venv/bin/voile lab attach host-2 mine --network blue && .venv/bin/voile lab exec mine -- ip addr"
echo "  .venv/bin/voile lab down    # removes everything"
