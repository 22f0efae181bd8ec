#!/usr/bin/env bash
# Fetches xterm.js, its fit addon and asciinema-player from the npm
# registry, checks them
# against the integrity the registry publishes (and pinned here), and copies
# the built files the console serves into rtunnel-server/assets/vendor/.
# The result is committed: building and running rtunnel needs neither npm nor
# the network. Run this only to change the version (then update the pins).
set -euo pipefail

XTERM="@xterm/xterm@6.0.0"
XTERM_SHA512="TQwDdQGtwwDt+2cgKDLn0IRaSxYu1tSUjgKarSDkUM0ZNiSRXFpjxEsvc/Zgc5kq5omJ+V0a8/kIM2WD3sMOYg=="
FIT="@xterm/addon-fit@0.11.0"
FIT_SHA512="jYcgT6xtVYhnhgxh3QgYDnnNMYTcf8ElbxxFzX0IZo+vabQqSPAjC3c1wJrKB5E19VwQei89QCiZZP86DCPF7g=="
PLAYER="asciinema-player@3.18.0"
PLAYER_SHA512="5gpt2ipFcy4NKmgkv+c/QXnJ9zMicxqWROCOuJqgwwtiYKM8Qe9hnDOvfqke5bW6M2DW/seO3uQYkQ0xeUUVtw=="

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/rtunnel-server/assets/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fetch() { # package expected-sha512 -> extracts into $work/<name>
    local pkg="$1" want="$2" name tarball got
    name="$(echo "$pkg" | sed 's|^@xterm/||; s|@.*||')"
    tarball="$work/$(cd "$work" && npm pack --silent "$pkg" | tail -n1)"
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
fetch "$PLAYER" "$PLAYER_SHA512"
mkdir -p "$out"
cp "$work/xterm/package/lib/xterm.js" "$out/xterm.js"
cp "$work/xterm/package/css/xterm.css" "$out/xterm.css"
cp "$work/xterm/package/LICENSE" "$out/LICENSE.xterm"
cp "$work/addon-fit/package/lib/addon-fit.js" "$out/addon-fit.js"
cp "$work/asciinema-player/package/dist/bundle/asciinema-player.min.js" "$out/asciinema-player.js"
cp "$work/asciinema-player/package/dist/bundle/asciinema-player.css" "$out/asciinema-player.css"
cp "$work/asciinema-player/package/LICENSE" "$out/LICENSE.asciinema-player"
# The source maps are not shipped; drop the comments that point at them.
sed -i '/^\/\/# sourceMappingURL=/d' "$out/xterm.js" "$out/addon-fit.js" "$out/asciinema-player.js"
{
    echo "# Vendored from the npm registry by scripts/vendor-console.sh; do not edit."
    echo "# Licenses: xterm.js and its fit addon MIT, asciinema-player Apache-2.0."
    echo "$XTERM sha512-$XTERM_SHA512"
    echo "$FIT sha512-$FIT_SHA512"
    echo "$PLAYER sha512-$PLAYER_SHA512"
    echo "# sha256 of each file as committed (checked by a test):"
    (cd "$out" && sha256sum xterm.js xterm.css addon-fit.js LICENSE.xterm \
        asciinema-player.js asciinema-player.css LICENSE.asciinema-player)
} > "$out/VERSIONS"
echo "vendored into $out"
