#!/usr/bin/env bash
# Prints the folder holding MaxMind's GeoIP test databases, fetching them when needed:
# ../shared/fixtures/geoip when it exists (this workplace), otherwise the same files from the
# PyPI source package maxminddb==3.2.0 (MIT/Apache-2.0), cached under target/fixtures/geoip.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
shared="$root/../shared/fixtures/geoip"
if [ -z "${TM_FORCE_FETCH:-}" ] && [ -f "$shared/GeoIP2-City-Test.mmdb" ]; then
  echo "$shared"
  exit 0
fi
cache="$root/target/fixtures/geoip"
if [ ! -f "$cache/GeoIP2-City-Test.mmdb" ] || [ ! -f "$cache/GeoLite2-ASN-Test.mmdb" ]; then
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --no-binary :all: "maxminddb==3.2.0" -d "$tmp" >&2
  mkdir -p "$cache"
  tar -xzf "$tmp"/maxminddb-3.2.0.tar.gz -C "$tmp"
  cp "$tmp"/maxminddb-3.2.0/tests/data/test-data/{GeoIP2-City-Test,GeoLite2-ASN-Test,GeoIP2-Anonymous-IP-Test}.mmdb "$cache/"
  cp "$tmp"/maxminddb-3.2.0/LICENSE* "$cache/" 2>/dev/null || true
  rm -rf "$tmp"
fi
echo "$cache"
