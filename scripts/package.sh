#!/usr/bin/env bash
# Debian packages of rtunnel-server and rtunnel-agent, with cargo-deb
# (installed once into $RTUNNEL_TOOLS, ~/.cache/rtunnel-tools by default):
# the binary, a systemd unit, a default config in /etc, the system user
# (server), shell completions and the man page.
#
#   scripts/package.sh              release binaries, packages in target/debian
#   scripts/package.sh --install    also, as root: install them, start the
#                                   server as its unit would, check it answers,
#                                   verify the units, and remove them again
#
# PACKAGE_PROFILE picks the cargo profile (default release; the test command
# uses dev, whose binaries it has built already). Every package's contents
# are listed and checked.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${PACKAGE_PROFILE:-release}
install=false
[ "${1:-}" = "--install" ] && install=true
tools=${RTUNNEL_TOOLS:-$HOME/.cache/rtunnel-tools}
export PATH="$tools/bin:$PATH"
if ! cargo deb --version >/dev/null 2>&1; then
    echo "package: installing cargo-deb into $tools" >&2
    cargo install --locked --root "$tools" cargo-deb@3.8.0 >&2
fi

cargo build --locked --profile "$profile" -p rtunnel-server -p rtunnel-agent
dir=$profile
[ "$profile" = dev ] && dir=debug

assets=target/package-assets
mkdir -p "$assets"
for bin in rtunnel-server rtunnel-agent; do
    "target/$dir/$bin" completions bash >"$assets/$bin.bash"
    "target/$dir/$bin" completions zsh >"$assets/_$bin"
    "target/$dir/$bin" completions fish >"$assets/$bin.fish"
    "target/$dir/$bin" man | gzip -9n >"$assets/$bin.1.gz"
done

rm -rf target/debian
for pkg in rtunnel-server rtunnel-agent; do
    cargo deb --no-build --quiet --profile "$profile" -p "$pkg" -o target/debian/
done

# What each package holds, and that nothing expected is missing.
check_contents() {
    local deb=$1
    shift
    local listing
    listing=$(dpkg-deb -c "$deb")
    echo "$listing"
    for path in "$@"; do
        if ! grep -q " \./$path\$" <<<"$listing"; then
            echo "package: $deb lacks $path" >&2
            exit 1
        fi
    done
}
server_deb=$(ls target/debian/rtunnel-server_*.deb)
agent_deb=$(ls target/debian/rtunnel-agent_*.deb)
for deb in "$server_deb" "$agent_deb"; do
    echo "== $deb"
    dpkg-deb -f "$deb" Package Version Architecture Depends
done
check_contents "$server_deb" usr/bin/rtunnel-server etc/rtunnel/server.toml \
    usr/lib/systemd/system/rtunnel-server.service \
    usr/share/bash-completion/completions/rtunnel-server \
    usr/share/zsh/vendor-completions/_rtunnel-server \
    usr/share/man/man1/rtunnel-server.1.gz
check_contents "$agent_deb" usr/bin/rtunnel-agent etc/rtunnel-agent/agent.toml \
    usr/lib/systemd/system/rtunnel-agent.service \
    usr/share/bash-completion/completions/rtunnel-agent \
    usr/share/man/man1/rtunnel-agent.1.gz
dpkg-deb -I "$server_deb" conffiles | grep -qx /etc/rtunnel/server.toml

$install || exit 0
if [ "$(id -u)" != 0 ]; then
    echo "package: not root, so the packages are built and listed but not installed" >&2
    exit 0
fi
if dpkg -s rtunnel-server >/dev/null 2>&1 || dpkg -s rtunnel-agent >/dev/null 2>&1; then
    echo "package: rtunnel is installed on this machine already; not touching it" >&2
    exit 0
fi
user_existed=false
group_existed=false
getent passwd rtunnel >/dev/null && user_existed=true
getent group rtunnel >/dev/null && group_existed=true
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    dpkg --purge rtunnel-server rtunnel-agent >/dev/null 2>&1 || true
    rm -rf /var/lib/rtunnel /etc/rtunnel /etc/rtunnel-agent
    $user_existed || userdel rtunnel 2>/dev/null || true
    $group_existed || groupdel rtunnel 2>/dev/null || true
}
trap cleanup EXIT
dpkg -i "$server_deb" "$agent_deb"
getent passwd rtunnel >/dev/null || { echo "package: no rtunnel user" >&2; exit 1; }
stat -c '%U:%G %a' /etc/rtunnel/server.toml | grep -qx 'root:rtunnel 640'
stat -c '%a' /etc/rtunnel-agent/agent.toml | grep -qx 600
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /usr/lib/systemd/system/rtunnel-server.service /usr/lib/systemd/system/rtunnel-agent.service
else
    echo "package: no systemd-analyze here; the units are not verified" >&2
fi
[ -s /usr/share/man/man1/rtunnel-server.1.gz ]

# Started as the unit starts it (its user, its config, its state
# directory), on a free port; it must answer /readyz.
install -d -o rtunnel -g rtunnel -m 700 /var/lib/rtunnel
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
exec_start=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/rtunnel-server.service)
log=$(mktemp)
runuser -u rtunnel -- env RTUNNEL_LISTEN="127.0.0.1:$port" $exec_start >"$log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    if curl -fsS "http://127.0.0.1:$port/readyz" 2>/dev/null; then
        echo
        break
    fi
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$log" >&2; exit 1; }
# Its files are its own.
stat -c '%U %a' /var/lib/rtunnel/secret.key | grep -qx 'rtunnel 600'
# The agent's default config is there to be filled in: check says what is
# missing, in one line.
if /usr/bin/rtunnel-agent check --config /etc/rtunnel-agent/agent.toml 2>"$log"; then
    echo "package: an unconfigured agent passed its check" >&2
    exit 1
fi
grep -q "/etc/rtunnel-agent/secret" "$log"
echo "package: installed, started as rtunnel on port $port, answered /readyz; removing again"
