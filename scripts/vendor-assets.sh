#!/usr/bin/env bash
# Copies the console's third-party browser assets from npm (crates/server/web,
# versions pinned in package.json/package-lock.json) into crates/server/static/,
# where certflow embeds them (include_bytes!) and serves them itself: never a CDN.
# `--check` only verifies that the committed copies equal the npm packages'.
set -euo pipefail
cd "$(dirname "$0")/../crates/server"

if [ ! -d web/node_modules/htmx.org ]; then
  (cd web && npm ci --no-audit --no-fund --silent)
fi

check=false
[ "${1:-}" = "--check" ] && check=true
status=0
for pair in "web/node_modules/htmx.org/dist/htmx.min.js:static/htmx.min.js"; do
  src="${pair%%:*}" dst="${pair##*:}"
  if $check; then
    if ! cmp -s "$src" "$dst"; then
      echo "vendor-assets: $dst differs from $src: run scripts/vendor-assets.sh and commit" >&2
      status=1
    fi
  else
    cp "$src" "$dst"
    echo "vendor-assets: $dst <- $src"
  fi
done
exit $status
