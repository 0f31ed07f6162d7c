#!/usr/bin/env bash
# Build a real Asterisk for the tests, once, into a cache outside the checkout.
#
#   tests/peers/build_asterisk.sh VERSION [SOURCES_DIR]
#
# VERSION is a release whose tarball is in SOURCES_DIR (default: ../shared/asterisk beside the
# checkout, or $IPWATCH_ASTERISK_SOURCES): asterisk-VERSION.tar.xz and pjproject-*.tar.bz2.
# The install prefix is $IPWATCH_TEST_CACHE (default /var/cache/ipwatch-test, or
# $XDG_CACHE_HOME/ipwatch-test when that is not writable)/asterisk-VERSION-KEY, where KEY is the
# sha256 of the tarballs and of this script, so a changed source or recipe builds anew and a
# cached build is found in well under a second. Prints the prefix on stdout; the build log goes
# to PREFIX.log. Flags follow LAB.md, "Real Asterisk from source".
set -euo pipefail

version=${1:?usage: build_asterisk.sh VERSION [SOURCES_DIR]}
here=$(cd "$(dirname "$0")" && pwd)
sources=${2:-${IPWATCH_ASTERISK_SOURCES:-$here/../../../shared/asterisk}}
sources=$(cd "$sources" && pwd)
tarball=$sources/asterisk-$version.tar.xz
[ -f "$tarball" ] || { echo "build_asterisk: $tarball not found (set IPWATCH_ASTERISK_SOURCES)" >&2; exit 2; }
pjproject=$(find "$sources" -maxdepth 1 -name 'pjproject-*.tar.bz2' | sort | tail -n 1)
[ -n "$pjproject" ] || { echo "build_asterisk: no pjproject-*.tar.bz2 in $sources" >&2; exit 2; }

cache=${IPWATCH_TEST_CACHE:-/var/cache/ipwatch-test}
if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/ipwatch-test
  mkdir -p "$cache"
fi
key=$(cat "$tarball" "$pjproject" "$0" | sha256sum | cut -c1-16)
prefix=$cache/asterisk-$version-$key
if [ -x "$prefix/sbin/asterisk" ] && [ -f "$prefix/.complete" ]; then
  echo "$prefix"
  exit 0
fi

# One builder per prefix: a second caller waits for the first and then finds the cache.
exec 9>"$prefix.lock"
flock 9
if [ -f "$prefix/.complete" ]; then
  echo "$prefix"
  exit 0
fi

log=$prefix.log
work=$(mktemp -d "$cache/build-$version.XXXXXX")
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
echo "build_asterisk: building Asterisk $version into $prefix (log: $log)" >&2
{
  rm -rf "$prefix"
  mkdir -p "$work/externals"
  cp "$pjproject" "$work/externals/"
  tar -xJf "$tarball" -C "$work"
  cd "$work/asterisk-$version"
  ./configure --prefix="$prefix" --with-pjproject-bundled \
    --with-externals-cache="$work/externals" --disable-xmldoc
  make menuselect.makeopts
  extra=()
  # chan_sip is off by default in 20 and gone from 21 on.
  [ "${version%%.*}" -le 20 ] && extra=(--enable chan_sip)
  menuselect/menuselect --disable-category MENUSELECT_CORE_SOUNDS \
    --disable-category MENUSELECT_MOH --disable-category MENUSELECT_EXTRA_SOUNDS \
    --disable BUILD_NATIVE --disable-category MENUSELECT_APPS --disable-category MENUSELECT_CDR \
    --disable-category MENUSELECT_CEL --enable app_dial --enable app_echo "${extra[@]}" \
    menuselect.makeopts
  make -j"$(nproc)"
  make install
} >"$log" 2>&1 || { echo "build_asterisk: build of $version failed; last lines of $log:" >&2; tail -n 30 "$log" >&2; exit 1; }
echo "$(( $(date +%s) - started ))" >"$prefix/.complete"
echo "build_asterisk: Asterisk $version built in $(( $(date +%s) - started )) s" >&2
echo "$prefix"
