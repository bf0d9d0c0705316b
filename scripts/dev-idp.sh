#!/usr/bin/env bash
# A development identity provider for trying the web console locally:
# oidc-provider (testdata/oidc/provider.mjs, the provider the tests use) on
# 127.0.0.1 with a `console` client for a `certflow serve` on this machine and
# three people with fixed passwords. It writes the matching certflow config
# (the `[auth.oidc]` table) and prints it with the sign-in credentials.
#
# DEVELOPMENT ONLY: oidc-provider's devInteractions login page, fixed client
# secret, fixed passwords and cookie key, loopback only. Never point a real
# certflow at it.
#
# Usage: scripts/dev-idp.sh [--port 8090] [--certflow http://127.0.0.1:8080] [--config certflow-dev.toml]
# Stop it with Ctrl-C.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FIXTURE="$ROOT/testdata/oidc"
PORT="${DEV_IDP_PORT:-8090}"
CERTFLOW="${CERTFLOW_URL:-http://127.0.0.1:8080}"
CONFIG="${DEV_IDP_CONFIG:-$PWD/certflow-dev.toml}"
PASSWORD="certflow-dev"

while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --certflow) CERTFLOW="${2%/}"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "dev-idp: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# The session cookie is Secure: browsers keep it over plain HTTP only on
# loopback, so the console must be reached at a loopback address.
case "$CERTFLOW" in
  http://127.0.0.1:*|http://localhost:*) ;;
  *) echo "dev-idp: --certflow must be http://127.0.0.1:PORT (a local certflow), not $CERTFLOW" >&2; exit 2 ;;
esac
LISTEN="127.0.0.1:${CERTFLOW##*:}"

command -v node >/dev/null 2>&1 || { echo "dev-idp: needs Node.js 20 or later (apt-get install nodejs npm)" >&2; exit 1; }
if [ ! -d "$FIXTURE/node_modules/oidc-provider" ]; then
  echo "== installing oidc-provider (npm ci in $FIXTURE)"
  (cd "$FIXTURE" && npm ci --no-audit --no-fund --silent)
fi

# Refuse to overwrite a config this script did not write.
MARK="# Written by scripts/dev-idp.sh"
if [ -e "$CONFIG" ] && ! head -n1 "$CONFIG" | grep -qF "$MARK"; then
  echo "dev-idp: $CONFIG exists and was not written by this script; pass --config another.toml" >&2
  exit 1
fi
cat >"$CONFIG" <<EOF
$MARK (development only): the web console signs in
# through the dev identity provider at http://127.0.0.1:$PORT.
[server]
listen = "$LISTEN"

[auth.oidc]
issuer = "http://127.0.0.1:$PORT"
client_id = "console"
client_secret = "console-secret"
redirect_uri = "$CERTFLOW/console/callback"
post_logout_redirect_uri = "$CERTFLOW/console/signed-out"
scopes = ["groups"]
team_group_prefix = "team-"

[auth.oidc.roles]
admin = ["certflow-admins"]
operator = ["certflow-operators"]
viewer = ["certflow-viewers"]
EOF

cat <<EOF
== certflow config written to $CONFIG:

$(cat "$CONFIG")

== run certflow with it (another shell, from $ROOT):
   cargo run --release --bin certflow -- serve --config $CONFIG

== then open $CERTFLOW/console/ and sign in (password for all: $PASSWORD):
   admin@example.test      admin, team payments
   operator@example.test   operator, teams payments and search
   viewer@example.test     viewer, team payments

Expected, as this is a loopback dev setup: certflow warns that the console is
served over plain HTTP (browsers keep its Secure cookie on 127.0.0.1), and
oidc-provider's WARNING lines below (dev interactions, in-memory storage, and
on Node 20 "Unsupported runtime").

== dev identity provider on http://127.0.0.1:$PORT (development only; Ctrl-C stops it)
EOF

export OP_PORT="$PORT"
export CONSOLE_REDIRECT_URI="$CERTFLOW/console/callback"
export CONSOLE_POST_LOGOUT_URI="$CERTFLOW/console/signed-out"
export OP_TOKEN_TTL=3600
export OP_USERS="{
  \"admin@example.test\": {\"password\": \"$PASSWORD\", \"groups\": [\"certflow-admins\", \"team-payments\"]},
  \"operator@example.test\": {\"password\": \"$PASSWORD\", \"groups\": [\"certflow-operators\", \"team-payments\", \"team-search\"]},
  \"viewer@example.test\": {\"password\": \"$PASSWORD\", \"groups\": [\"certflow-viewers\", \"team-payments\"]}
}"
cd "$FIXTURE"
exec node provider.mjs
