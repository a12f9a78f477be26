#!/usr/bin/env bash
# Unpack HAProxy from a newer Debian suite (trixie -> 3.0.x, sid -> 3.2.x, experimental -> 3.4.x)
# into DEST, without installing anything on the system, and write DEST/haproxy: a wrapper that
# starts it with that suite's own dynamic loader and libraries (its libc is newer than bookworm's).
#
# Usage: scripts/fetch-haproxy-next.sh SUITE DEST
# How the tests use it: docs/development.md. The package set is resolved by apt itself
# (download-only against an empty dpkg status), so a new dependency in the suite is followed.
# Experimental holds only the packages that are newer there: its haproxy's dependencies come
# from sid, so that suite is listed too and experimental is asked for by name (-t).
set -euo pipefail
suite=$1
dest=$(realpath -m "$2")
uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
uri=${uri:-http://deb.debian.org/debian}

work="$dest/.apt"
rm -rf "$dest"
mkdir -p "$work/lists/partial" "$work/archives/partial" "$dest/root"
: > "$work/status"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] $uri $suite main" > "$work/sources.list"
target_release=()
if [ "$suite" = experimental ]; then
  echo "deb [signed-by=$keyring] $uri sid main" >> "$work/sources.list"
  target_release=(-t experimental)
fi
apt_opts=(
  -o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=/nonexistent
  -o Dir::State::Lists="$work/lists" -o Dir::State::status="$work/status"
  -o Dir::Cache::archives="$work/archives" -o Dir::Cache="$work"
  -o APT::Install-Recommends=false -o Debug::NoLocking=true
)
apt-get "${apt_opts[@]}" -qq update
# The runtime closure of haproxy in that suite. Maintainer-script helpers (adduser, debconf,
# perl...) come along too; they are unpacked and never run.
apt-get "${apt_opts[@]}" -qq -y --download-only install ${target_release[@]+"${target_release[@]}"} haproxy >/dev/null
for deb in "$work"/archives/*.deb; do dpkg-deb -x "$deb" "$dest/root"; done
libdir="$dest/root/usr/lib/x86_64-linux-gnu"
loader="$libdir/ld-linux-x86-64.so.2"
[ -x "$loader" ] || loader="$dest/root/lib64/ld-linux-x86-64.so.2"
cat > "$dest/haproxy" <<WRAP
#!/bin/sh
exec "$loader" --library-path "$libdir:$dest/root/lib/x86_64-linux-gnu" "$dest/root/usr/sbin/haproxy" "\$@"
WRAP
chmod +x "$dest/haproxy"
rm -rf "$work"
# read the whole output: `head` would close the pipe early and pipefail would report SIGPIPE
"$dest/haproxy" -v | sed -n 1p
