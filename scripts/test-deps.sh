#!/usr/bin/env bash
# Installs the real programs the tests run next to rtunnel, when missing:
# tinyproxy (the HTTP CONNECT proxy agents dial through), asciinema (plays
# the terminal recordings back), chromium (the browser the terminal page
# is tested in, headless), PostgreSQL and Redis (started for the tests by
# scripts/test-services.sh, on free ports), nginx (the documented
# front end, run by tests/deployment.rs, and a customer's name-routing
# proxy in tests/apps.rs), and Cockpit and Jupyter Notebook (the real web
# applications tests/apps.rs drives through the subdomain proxy), and curl.
# Debian packages;
# installing needs root (CI runs as root) or sudo.
set -euo pipefail

# Two local users for the tests of the agent's privilege handling
# (tests/terminal.rs): an agent running as a user of its own, and the
# --terminal-user its shells run as. Made once; harmless to keep.
if [ "$(id -u)" -eq 0 ]; then
    for user in rtunnel-test-agent rtunnel-test-shell; do
        id "$user" >/dev/null 2>&1 ||
            useradd --system --user-group --create-home --home-dir "/var/lib/$user" \
                --shell /bin/sh "$user"
    done
fi

missing=()
command -v tinyproxy >/dev/null 2>&1 || missing+=(tinyproxy)
command -v asciinema >/dev/null 2>&1 || missing+=(asciinema)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/lib/cockpit/cockpit-ws ] || missing+=(cockpit-ws)
[ -d /usr/share/cockpit/systemd ] || missing+=(cockpit-system)
command -v cockpit-bridge >/dev/null 2>&1 || missing+=(cockpit-bridge)
command -v jupyter-notebook >/dev/null 2>&1 || missing+=(jupyter-notebook)
/usr/bin/python3 -c 'import ipykernel' >/dev/null 2>&1 || missing+=(python3-ipykernel)
# scripts/package.sh (the Debian packages) asks the installed server with
# curl; the README's quickstart (tests/readme.rs) runs its curl commands.
command -v curl >/dev/null 2>&1 || missing+=(curl)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "test dependencies: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Tests start their own instances on free ports; stop any the packages started.
for service in tinyproxy redis-server postgresql nginx cockpit.socket; do
    $sudo systemctl stop "$service" >/dev/null 2>&1 || $sudo service "$service" stop >/dev/null 2>&1 || true
done
