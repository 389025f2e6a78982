#!/usr/bin/env bash
# Install what pgfm's demo and tests need on a fresh Debian 12 machine, skipping what is
# already there: PostgreSQL's server binaries and psql, and (as root) iproute2, openssl
# and what the package test uses. The Rust toolchain must exist.
set -euo pipefail

have_postgres() {
    compgen -G "/usr/lib/postgresql/*/bin/pg_rewind" >/dev/null && command -v psql >/dev/null
}

if ! have_postgres; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "PostgreSQL server binaries are missing; run this as root (or: sudo apt-get install postgresql)" >&2
        exit 1
    fi
    echo "Installing PostgreSQL (server binaries only; no cluster is created or started)..."
    # pgfm's agents start PostgreSQL themselves: keep Debian from creating and starting
    # its own "main" cluster.
    mkdir -p /etc/postgresql-common
    if ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
        echo "create_main_cluster = false" >> /etc/postgresql-common/createcluster.conf
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql postgresql-client >/dev/null
fi

# The network-namespace lab (pgfm lab up --netns, the partition tests, run as root) needs
# the ip command.
if ! command -v ip >/dev/null && [ "$(id -u)" -eq 0 ]; then
    echo "Installing iproute2 (the ip command, for the network-namespace lab)..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends iproute2 >/dev/null
fi

# The tests check the certificates pgfm init writes with openssl, as an operator would,
# and build, install (as root) and remove the Debian package: dpkg-deb, strip and
# objdump, man, systemd-analyze.
missing=""
command -v openssl >/dev/null || missing="$missing openssl"
command -v objdump >/dev/null || missing="$missing binutils"
command -v man >/dev/null || missing="$missing man-db"
command -v systemd-analyze >/dev/null || missing="$missing systemd"
if [ -n "$missing" ] && [ "$(id -u)" -eq 0 ]; then
    echo "Installing$missing (for the certificate and package tests)..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "cargo is missing: install Rust (https://rustup.rs) and run this again" >&2
    exit 1
fi
