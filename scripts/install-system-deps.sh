#!/usr/bin/env bash
# Install the Debian packages the agent and its test suite need, only those that are missing.
# Run as root on Debian 12 (what `make install` does); anywhere else it says what is missing.
set -euo pipefail
packages=(
  libmodsecurity3      # the engine (docs/engine.md "Engine facts": Debian's 3.0.9, PCRE2 JIT)
  libjemalloc2         # the allocator the agent preloads (docs/operations.md "Memory allocator")
  modsecurity-crs      # OWASP CRS 3.3.4, the rules config.example.yml includes
  haproxy              # HAProxy 2.6: e2e tests, make demo, make bench
  wrk                  # make bench
  python3-venv python3-dev
  gcc g++ libc6-dev    # the compiled engine binding (coraza_spoa_py/native/)
  libmodsecurity-dev   # its C++ part reads the engine's rule messages (native/msc_glue_rm.cc)
  ca-certificates
  systemd              # systemd-analyze verify: the unit test of etc/systemd/
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing Debian packages: ${missing[*]} (run 'make install' as root on Debian 12)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
