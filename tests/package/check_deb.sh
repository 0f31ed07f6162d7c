#!/bin/bash
# The Debian package on this (clean, Debian 12) system, as an admin meets it: lintian, its
# contents, `apt-get install ./ipwatch_*.deb`, what works then (demo, config check, man pages,
# completion, the unit, the triggers), an upgrade to a newer build with an edited conffile kept,
# and a purge that leaves nothing behind.
#
#   tests/package/check_deb.sh dist/ipwatch_VERSION_all.deb     (as root; CI runs it after make deb)
#
# It installs and purges the package for real, so it refuses to run where ipwatch is installed.
# The sh -c and bash -c programs below expand their variables in the child, on purpose.
# shellcheck disable=SC2016
set -euo pipefail

deb=$(realpath "$1")
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

ok() { echo "ok: $*"; }
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
# check DESCRIPTION COMMAND...: run COMMAND, which must succeed.
check() {
    local what=$1
    shift
    if "$@" >"$work/out" 2>&1; then ok "$what"; else
        fail "$what: $(tail -5 "$work/out")"
    fi
}
mode_is() { [ "$(stat -c %a "$1")" = "$2" ]; }
absent() {
    local path
    for path in "$@"; do
        if [ -e "$path" ]; then fail "left behind: $path"; else ok "gone: $path"; fi
    done
}

if dpkg-query -W -f='${Status}' ipwatch 2>/dev/null | grep -q installed || [ -e /etc/ipwatch ]; then
    echo "ipwatch is installed here, or /etc/ipwatch exists: run this on a clean system" >&2
    exit 2
fi
version=$(dpkg-deb -f "$deb" Version)

echo "== the package: $(basename "$deb"), $(stat -c %s "$deb") bytes"
check "lintian: no errors" lintian --fail-on error --display-info "$deb"
grep -v '^running with root' "$work/out" >"$work/lintian" || true
cat "$work/lintian"
echo "lintian: $(grep -c '^E:' "$work/lintian" || true) errors, $(grep -c '^W:' "$work/lintian" || true) warnings, $(grep -c '^I:' "$work/lintian" || true) info"
check "Architecture: all" test "$(dpkg-deb -f "$deb" Architecture)" = all
# Nothing compiled or arch-specific: 32-bit Raspberry Pi OS takes the same package.
if dpkg-deb -c "$deb" | grep -E '\.so(\.|$)|/lib/[a-z0-9_]+-linux-gnu[a-z]*/|\.pyc$'; then
    fail "architecture-specific files in the package"
else ok "no architecture-specific files"; fi
for library in python3-dnspython python3-watchdog python3-apscheduler python3-miniupnpc; do
    check "depends on $library" sh -c 'dpkg-deb -f "$1" Depends | grep -q "$2"' sh "$deb" "$library"
done

echo "== apt-get install ./$(basename "$deb")"
cp "$deb" "$work/"
check "apt-get install" apt-get install -y -q "$work/$(basename "$deb")"
cp "$work/out" "$work/install.log"
if ! getent passwd asterisk >/dev/null; then
    check "the install says the asterisk user is missing" \
        grep -q "the user 'asterisk' does not exist" "$work/install.log"
fi
check "ipwatch -V says $version" sh -c "ipwatch -V | grep -qx 'ipwatch ${version%%[+~-]*}'"
check "/usr/bin/ipwatch is Debian's python3" sh -c 'head -1 /usr/bin/ipwatch | grep -qx "#! */usr/bin/python3"'
check "ipwatch demo" timeout 120 ipwatch demo
check "config check accepts the shipped /etc/ipwatch/ipwatch.toml" ipwatch config check
check "/etc/ipwatch/ipwatch.toml is a conffile" \
    sh -c "dpkg-query -W -f='\${Conffiles}' ipwatch | grep -q ' /etc/ipwatch/ipwatch.toml '"
check "man ipwatch" sh -c 'man -P cat ipwatch 2>/dev/null | grep -q "EXIT STATUS"'
check "man ipwatch.toml" sh -c 'man -P cat ipwatch.toml 2>/dev/null | grep -q secret_file'
check "man 5 ipwatch.toml is the file format" sh -c 'man -w 5 ipwatch.toml | grep -q man5'
# As bash-completion loads it on demand, then what it offers after `ipwatch hooks test `.
check "bash completion of hooks test's events" bash -c '
    source /usr/share/bash-completion/completions/ipwatch
    COMP_WORDS=(ipwatch hooks test ""); COMP_CWORD=3; _ipwatch
    [[ " ${COMPREPLY[*]} " == *" change "* && " ${COMPREPLY[*]} " == *" recovered "* ]]'
check "systemd-analyze verify accepts the unit" \
    sh -c '[ -z "$(systemd-analyze verify /lib/systemd/system/ipwatch.service 2>&1)" ]'
check "the unit runs /usr/bin/ipwatch" grep -qx 'ExecStart=/usr/bin/ipwatch run' /lib/systemd/system/ipwatch.service
check "the unit is not enabled" sh -c '! ls /etc/systemd/system/*.wants/ipwatch.service 2>/dev/null'
check "NetworkManager dispatcher script, 755" mode_is /etc/NetworkManager/dispatcher.d/90-ipwatch 755
check "dhclient exit hook, 644" mode_is /etc/dhcp/dhclient-exit-hooks.d/ipwatch 644
check "ppp ip-up.d script, 755" mode_is /etc/ppp/ip-up.d/ipwatch 755
# With no daemon running, `ipwatch trigger` exits 3; the triggers must still succeed.
check "ppp ip-up.d script runs" /etc/ppp/ip-up.d/ipwatch ppp0 /dev/null 0 192.0.2.10 192.0.2.1 ""
check "NetworkManager script runs" /etc/NetworkManager/dispatcher.d/90-ipwatch eth0 up
for hook in mail webhook nftables-set mikrotik openwrt coturn; do
    check "example hook $hook" test -s "/usr/share/doc/ipwatch/examples/$hook"
done

echo "== upgrade to a newer build"
newer="$version+pkgtest1"
mkdir "$work/newer"
(cd "$root" && git ls-files -z --cached --others --exclude-standard |
    tar --null --files-from=- --ignore-failed-read -cf - | tar -xf - -C "$work/newer")
{
    printf 'ipwatch (%s) bookworm; urgency=medium\n\n  * Upgrade test.\n\n' "$newer"
    printf ' -- %s  %s\n\n' "$(dpkg-parsechangelog -l "$root/debian/changelog" -S Maintainer)" "$(date -R)"
    cat "$root/debian/changelog"
} >"$work/newer/debian/changelog"
check "dpkg-buildpackage of $newer" sh -c \
    'cd "$1" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc' sh "$work/newer"
echo '# an admin edit' >>/etc/ipwatch/ipwatch.toml
install -m 755 /usr/share/doc/ipwatch/examples/webhook /etc/ipwatch/hooks.d/20-webhook
install -m 600 /dev/null /etc/ipwatch/ami.secret
check "dpkg -i $newer over $version" dpkg -i "$work/ipwatch_${newer}_all.deb"
check "$newer is installed" sh -c "dpkg-query -W -f='\${Version}' ipwatch | grep -qx '$newer'"
check "the admin's edit of the conffile is kept" grep -q '^# an admin edit$' /etc/ipwatch/ipwatch.toml
check "ipwatch still works" ipwatch config check

echo "== dpkg --purge"
check "dpkg --purge ipwatch" dpkg --purge ipwatch
absent /etc/ipwatch /usr/lib/python3/dist-packages/ipwatch /usr/bin/ipwatch /var/lib/ipwatch \
    /lib/systemd/system/ipwatch.service /etc/NetworkManager/dispatcher.d/90-ipwatch \
    /etc/dhcp/dhclient-exit-hooks.d/ipwatch /etc/ppp/ip-up.d/ipwatch \
    /usr/share/bash-completion/completions/ipwatch /usr/share/man/man8/ipwatch.8.gz \
    /usr/share/doc/ipwatch
leftover=$(find /etc /usr /lib /var/lib -name '*ipwatch*' -not -path '/var/lib/dpkg/*' 2>/dev/null || true)
if [ -z "$leftover" ]; then ok "no file named *ipwatch* left"; else fail "left behind: $leftover"; fi

if [ "$failures" -gt 0 ]; then
    echo "$failures package checks failed" >&2
    exit 1
fi
echo "all package checks passed"
