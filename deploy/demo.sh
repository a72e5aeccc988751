#!/usr/bin/env bash
# Quick start: installs PostgreSQL if this machine lacks it (Debian/Ubuntu,
# needs root), then runs the demo (deploy/demo.rs): two throwaway clusters,
# the service between them, a change on each side arriving on the other.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "PostgreSQL server binaries not found; installing them (apt-get install postgresql)"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: run as root, or install PostgreSQL first: sudo apt-get install -y postgresql" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends postgresql
fi
exec cargo run --quiet --example demo
