#!/usr/bin/env bash
# Installs everything netfab needs on a fresh Debian 12 machine, idempotently:
# Debian packages (Debian's rustc-web ships a prebuilt `core` for bpfel, see
# ../shared/docs/ebpf-toolchain.md), bpf-linker built against LLVM 22, and
# etcd/iperf3/tcpdump for the lab and the tests, and the upstream CNI library
# (Go, built by the tests) and plugins the CNI tests chain with, and Prometheus
# (promtool and a server) for the metrics tests. Safe to run again: every step
# checks first.
set -euo pipefail

APT_PKGS=(rustc-web cargo-web libstd-rust-web-dev-bpf llvm-22-dev bpftool
          iproute2 iputils-ping iperf3 tcpdump etcd-server etcd-client iptables nftables
          protobuf-compiler libprotobuf-dev librsvg2-bin ca-certificates pkg-config
          python3-scapy golang-go golang-github-appc-cni-dev containernetworking-plugins
          prometheus python3-venv mmdebstrap umoci)
BPF_LINKER_VERSION=0.13.0

log() { printf '[setup] %s\n' "$*" >&2; }

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# Debian's etcd-server package enables a system etcd on :2379; netfab runs its
# own etcd instances, so keep the packaged one from holding the port.
# The same for Prometheus: the tests start their own servers in the lab.
for unit in etcd prometheus; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$unit" 2>/dev/null; then
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
  fi
done

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
  log "no cargo on PATH; using Debian's cargo for user space"
  export PATH="/usr/bin:$PATH"
fi

have_linker=$(bpf-linker --version 2>/dev/null || true)
if [[ $have_linker != *"$BPF_LINKER_VERSION"* ]]; then
  log "building bpf-linker $BPF_LINKER_VERSION against LLVM 22 (~80 s)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked "bpf-linker@$BPF_LINKER_VERSION" \
    --no-default-features --features llvm-22 -q
else
  log "bpf-linker present: $have_linker"
fi

# kubernetes-validate (PyPI) checks deploy/ against Kubernetes' own schemas.
VENV=/opt/netfab-venv
if [[ ! -x $VENV/bin/kubernetes-validate ]]; then
  log "installing kubernetes-validate into $VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q kubernetes-validate
else
  log "kubernetes-validate present"
fi

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
log "done"
