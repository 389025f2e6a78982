#!/usr/bin/env bash
# Build pgfm's Debian package: the binary, the systemd unit, the man pages and the bash,
# zsh and fish completions generated from the CLI, the example config, and /etc/pgfm
# (root, mode 711). Installing it starts nothing: a node first needs its files from
# `pgfm init`. Removing it, even with --purge, leaves /etc/pgfm, /var/lib/pgfm and every
# PostgreSQL data directory alone.
#
#   bash scripts/package.sh [--binary PATH] [--out DIR]
#
# Without --binary the release binary is built first. Prints the package's path.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
out="target/debian"
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "usage: bash scripts/package.sh [--binary PATH] [--out DIR]" >&2; exit 2 ;;
    esac
done
for tool in dpkg-deb objdump strip gzip; do
    if ! command -v "$tool" >/dev/null; then
        echo "package.sh needs $tool (apt-get install dpkg-dev binutils gzip)" >&2
        exit 1
    fi
done
if [ -z "$binary" ]; then
    cargo build --release --quiet -p pgfm
    binary=target/release/pgfm
fi
if [ ! -x "$binary" ]; then
    echo "--binary $binary is not an executable" >&2
    exit 2
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/pgfm_${version}_${arch}"

install -D -m 755 "$binary" "$root/usr/bin/pgfm"
# Debian ships binaries without their debugging symbols.
strip --strip-unneeded "$root/usr/bin/pgfm"
install -D -m 644 dist/pgfm.service "$root/lib/systemd/system/pgfm.service"
"$root/usr/bin/pgfm" manpages --out "$root/usr/share/man/man1" >/dev/null
chmod 644 "$root"/usr/share/man/man1/*.1
gzip -9n "$root"/usr/share/man/man1/*.1
install -d "$root/usr/share/bash-completion/completions" \
    "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
"$root/usr/bin/pgfm" completions bash > "$root/usr/share/bash-completion/completions/pgfm"
"$root/usr/bin/pgfm" completions zsh > "$root/usr/share/zsh/vendor-completions/_pgfm"
"$root/usr/bin/pgfm" completions fish > "$root/usr/share/fish/vendor_completions.d/pgfm.fish"
install -D -m 644 examples/pgfm.toml "$root/usr/share/doc/pgfm/examples/pgfm.toml"
install -D -m 644 README.md "$root/usr/share/doc/pgfm/README.md"
cat > "$root/usr/share/doc/pgfm/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pgfm
License: Apache-2.0
 On Debian systems the license is in /usr/share/common-licenses/Apache-2.0.
EOF
chmod 644 "$root/usr/share/doc/pgfm/copyright"
# 711: root's files stay private (600), and PostgreSQL, run as postgres, reaches the
# passfile it owns there.
install -d -m 711 "$root/etc/pgfm"

# The C library version the binary needs: the newest GLIBC_ symbol version it uses.
glibc=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)
size=$(du -sk "$root" | cut -f1)
mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<EOF
Package: pgfm
Version: $version
Architecture: $arch
Maintainer: pgfm developers <pgfm@localhost>
Installed-Size: $size
Depends: libc6 (>= $glibc), libgcc-s1
Recommends: postgresql
Section: database
Priority: optional
Homepage: https://github.com/pgfm/pgfm
Description: PostgreSQL failover manager
 One agent per node keeps a PostgreSQL cluster (a primary, streaming standbys and a
 witness) writable through failures and planned maintenance: automatic failover with
 lease self-fencing, lossless switchover, synchronous replication, a virtual IP, and
 consensus embedded in the agents (Raft), with nothing else to install. Start with
 pgfm init, which writes every node's files.
EOF
cat > "$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # Made once; an operator's later choice of mode is kept on upgrades.
    [ -d /etc/pgfm ] || install -d -m 711 /etc/pgfm
    [ -d /var/lib/pgfm ] || install -d -m 700 /var/lib/pgfm
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
    fi
fi
EOF
cat > "$root/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
# Stopping the agent leaves PostgreSQL running (KillMode=process).
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop pgfm.service >/dev/null 2>&1 || true
fi
EOF
cat > "$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
# /etc/pgfm (the node's files from pgfm init), /var/lib/pgfm (the agent's Raft state) and
# every PostgreSQL data directory stay, even on purge: they are the cluster.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
EOF
chmod 755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/pgfm_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
