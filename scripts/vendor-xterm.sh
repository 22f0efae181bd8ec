#!/usr/bin/env bash
# Fetches xterm.js and its fit addon from the npm registry, checks them
# against the integrity the registry publishes (and pinned here), and copies
# the built files the console serves into rtunnel-server/assets/vendor/.
# The result is committed: building and running rtunnel needs neither npm nor
# the network. Run this only to change the version (then update the pins).
set -euo pipefail

XTERM="@xterm/xterm@6.0.0"
XTERM_SHA512="TQwDdQGtwwDt+2cgKDLn0IRaSxYu1tSUjgKarSDkUM0ZNiSRXFpjxEsvc/Zgc5kq5omJ+V0a8/kIM2WD3sMOYg=="
FIT="@xterm/addon-fit@0.11.0"
FIT_SHA512="jYcgT6xtVYhnhgxh3QgYDnnNMYTcf8ElbxxFzX0IZo+vabQqSPAjC3c1wJrKB5E19VwQei89QCiZZP86DCPF7g=="

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/rtunnel-server/assets/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fetch() { # package expected-sha512 -> extracts into $work/<name>
    local pkg="$1" want="$2" name tarball got
    name="$(echo "$pkg" | sed 's|^@xterm/||; s|@.*||')"
    (cd "$work" && npm pack --silent "$pkg" >/dev/null)
    tarball="$(ls "$work"/xterm-"$name"-*.tgz)"
    got="$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
    if [ "$got" != "$want" ]; then
        echo "integrity mismatch for $pkg: got sha512-$got" >&2
        exit 1
    fi
    mkdir -p "$work/$name"
    tar xzf "$tarball" -C "$work/$name"
}

fetch "$XTERM" "$XTERM_SHA512"
fetch "$FIT" "$FIT_SHA512"
mkdir -p "$out"
cp "$work/xterm/package/lib/xterm.js" "$out/xterm.js"
cp "$work/xterm/package/css/xterm.css" "$out/xterm.css"
cp "$work/xterm/package/LICENSE" "$out/LICENSE.xterm"
cp "$work/addon-fit/package/lib/addon-fit.js" "$out/addon-fit.js"
# The source maps are not shipped; drop the comments that point at them.
sed -i '/^\/\/# sourceMappingURL=/d' "$out/xterm.js" "$out/addon-fit.js"
{
    echo "# Vendored from the npm registry by scripts/vendor-xterm.sh; do not edit."
    echo "$XTERM sha512-$XTERM_SHA512"
    echo "$FIT sha512-$FIT_SHA512"
    echo "# sha256 of each file as committed (checked by a test):"
    (cd "$out" && sha256sum xterm.js xterm.css addon-fit.js LICENSE.xterm)
} > "$out/VERSIONS"
echo "vendored into $out"
