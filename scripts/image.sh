#!/usr/bin/env bash
# Builds the netfab container image from Debian packages alone (no registry
# pull): a minimal Debian 12 rootfs made by mmdebstrap with what the agent
# executes (iptables, iproute2 for tc), netfab, netfab-cni and the eBPF
# object, packed by umoci into an OCI image layout, plus an archive of it.
#
#   bash scripts/image.sh [OUT]      # default target/image
#
# Push with skopeo: skopeo copy oci:target/image/oci:VERSION docker://REGISTRY/netfab:VERSION
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/image}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

for p in mmdebstrap umoci; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null
  fi
done

source scripts/env.sh
cargo xtask build --release >&2
BIN=target/release

mkdir -p "$OUT"
rm -rf "$OUT/oci" "$OUT/rootfs.tar"
# Docs, man pages and locales are not needed in the image.
mmdebstrap --variant=essential --mode=root \
  --include=iptables,iproute2,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook="copy-in $BIN/netfab $BIN/netfab-cni /usr/bin" \
  --customize-hook='mkdir -p "$1/usr/lib/netfab"' \
  --customize-hook="copy-in $BIN/netfab.bpf.o /usr/lib/netfab" \
  bookworm "$OUT/rootfs.tar" http://deb.debian.org/debian >&2

umoci init --layout "$OUT/oci"
umoci new --image "$OUT/oci:$VERSION"
umoci raw add-layer --image "$OUT/oci:$VERSION" "$OUT/rootfs.tar"
umoci config --image "$OUT/oci:$VERSION" \
  --os linux --architecture amd64 \
  --config.entrypoint netfab --config.cmd agent \
  --config.label "org.opencontainers.image.title=netfab" \
  --config.label "org.opencontainers.image.version=$VERSION" \
  --config.label "org.opencontainers.image.source=https://github.com/netfab/netfab" \
  --config.label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)"
tar -C "$OUT/oci" -cf "$OUT/netfab-$VERSION.oci.tar" .
rm -f "$OUT/rootfs.tar"
echo "$OUT/oci:$VERSION ($(du -sh "$OUT/oci" | cut -f1) compressed)"
