#!/usr/bin/env bash
# A development identity provider for trying the web console locally:
# oidc-provider (testdata/oidc/provider.mjs, the provider the tests use) on
# 127.0.0.1 with a `console` client for a `certflow serve` on this machine and
# three people with fixed passwords. It writes the whole certflow config for
# one machine (console sign-in, the agent listener, and the data directory of
# the server you already ran, as an absolute path, so the same CA, token and
# certificates whatever directory it is started from) and prints the exact
# command to start certflow with it, and the sign-in credentials.
#
# DEVELOPMENT ONLY: oidc-provider's devInteractions login page, fixed client
# secret, fixed passwords and cookie key, loopback only. Never point a real
# certflow at it.
#
# Usage: scripts/dev-idp.sh [--port 8090] [--certflow http://127.0.0.1:8080]
#          [--config certflow-dev.toml] [--data-dir certflow-data]
# (paths relative to the current directory). Stop it with Ctrl-C.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FIXTURE="$ROOT/testdata/oidc"
PORT="${DEV_IDP_PORT:-8090}"
CERTFLOW="${CERTFLOW_URL:-http://127.0.0.1:8080}"
CONFIG="${DEV_IDP_CONFIG:-certflow-dev.toml}"
DATA="certflow-data"
PASSWORD="certflow-dev"

while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --certflow) CERTFLOW="${2%/}"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --data-dir) DATA="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
# Absolute, so the server finds the same data from any directory.
absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/${1#./}" ;; esac; }
CONFIG="$(absolute "$CONFIG")"
DATA="$(absolute "$DATA")"

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
data_dir = "$DATA"

[server]
listen = "$LISTEN"

[agent]
listen = "127.0.0.1:8443"
server_names = ["localhost", "127.0.0.1"]

[auth.oidc]
issuer = "http://127.0.0.1:$PORT"
client_id = "console"
display_name = "the development identity provider"
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

# The command as the user can run it: the certflow on PATH, else the clone's.
if command -v certflow >/dev/null 2>&1; then
  RUN="certflow serve --config $CONFIG"
elif [ -x "$ROOT/target/release/certflow" ]; then
  RUN="$ROOT/target/release/certflow serve --config $CONFIG"
else
  RUN="cargo run --release --manifest-path $ROOT/Cargo.toml --bin certflow -- serve --config $CONFIG"
fi
if [ -d "$DATA" ]; then
  DATA_NOTE="the data of the server you ran before ($DATA): same CA, same token, same certificates"
else
  DATA_NOTE="NOTE: $DATA does not exist yet, so certflow will create a new CA and print a
   new bootstrap token. If your server ran in another directory, stop this script and
   run it there (or pass --data-dir <that directory>/certflow-data)."
fi

cat <<EOF
== certflow config written to $CONFIG:

$(cat "$CONFIG")

== stop the certflow you started (Ctrl-C) and run it with this file (from any directory):
   $RUN
   $DATA_NOTE

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
