#!/usr/bin/env bash
# The main job: install what is needed, build, then bring up a lab (hosts in
# network namespaces, one agent each, containers), ping between every pair of
# containers, run iperf3 across hosts, and tear it all down again.
set -euo pipefail
source "$(dirname "$0")/env.sh"
bash scripts/setup.sh
cargo xtask build
./target/debug/netfab-lab run --name nf --hosts "${HOSTS:-2}" --containers "${CONTAINERS:-2}" "$@"
