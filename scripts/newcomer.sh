#!/usr/bin/env bash
# The README's newcomer path, followed as written: the shell blocks marked
# `<!-- newcomer:NAME -->` in README.md are extracted and run in order, in a
# fresh directory, so the README cannot drift from what works. Between them
# this script checks what a newcomer would look at: the certificate verifies
# with the published root, nginx serves the agent's certificate and then its
# renewal, the dry run says there is nothing to do, and after the restart
# with dev-idp.sh's configuration (run from another directory) the same CA,
# token, certificates and agent still work and the console signs in through
# the dev identity provider.
#
# What differs from a newcomer's machine, and why:
# - The binaries are the already-built ones in BIN_DIR (default
#   target/debug), put on PATH by the README's own PATH line with
#   `target/release` replaced: building a release here would take longer
#   than the rest of the test suite.
# - HOME is a temporary directory, so `~/certflow-tour` is a fresh one.
# - Ports: the README's 8080 (console), 8443 (agent listener), 9443 (nginx)
#   and 8090 (dev identity provider), and the metrics listener's 9464,
#   become free ports, through the variables certflow and dev-idp.sh read
#   (CERTFLOW_SERVER__LISTEN, CERTFLOW_AGENT__LISTEN, CERTFLOW_METRICS__LISTEN,
#   CERTFLOW_URL, DEV_IDP_PORT) and in the extracted
#   text, so the test runs beside the others and beside a certflow you run.
#   That the agent listener is on by default is checked by the config tests.
#
# Usage: scripts/newcomer.sh [BIN_DIR]
# Needs: jq, curl, openssl, nginx, node (with testdata/oidc's node_modules):
# scripts/peers.sh installs them. NEWCOMER_LOGS (optional) is where the
# server logs go, for scripts/scan-logs.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
README="$ROOT/README.md"
BIN_DIR="$(cd "${1:-$ROOT/target/debug}" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/certflow-newcomer.XXXXXX")"
LOGS="${NEWCOMER_LOGS:-$WORK}"
mkdir -p "$LOGS"
STARTED=$(date +%s)

say() { echo "newcomer: $*"; }
fail() { echo "newcomer: FAILED: $*" >&2; exit 1; }
for tool in jq curl openssl node python3; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing (scripts/peers.sh installs it)"
done
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || fail "nginx is missing (scripts/peers.sh installs it)"
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac
[ -x "$BIN_DIR/certflow" ] && [ -x "$BIN_DIR/certflow-agent" ] \
  || fail "$BIN_DIR needs certflow and certflow-agent (cargo build)"

# Nothing of the caller's certflow settings leaks in.
for v in $(env | sed -n 's/^\(CERTFLOW_[A-Z0-9_]*\)=.*/\1/p'); do unset "$v"; done

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
API=$(free_port); AGENT=$(free_port); NGINX=$(free_port); IDP=$(free_port); METRICS=$(free_port)
export HOME="$WORK/home"
mkdir -p "$HOME"
export CERTFLOW_URL="http://127.0.0.1:$API"
export CERTFLOW_SERVER__LISTEN="127.0.0.1:$API"
export CERTFLOW_AGENT__LISTEN="127.0.0.1:$AGENT"
export CERTFLOW_METRICS__LISTEN="127.0.0.1:$METRICS"
export DEV_IDP_PORT="$IDP"
TOUR="$HOME/certflow-tour"

# The text of the block marked <!-- newcomer:$1 -->, ports replaced.
block() {
  local text
  text=$(awk -v mark="<!-- newcomer:$1 -->" '
    $0 == mark { found = 1; next }
    found == 1 && /^```/ { if (inside) exit; inside = 1; next }
    found == 1 && inside { print }
  ' "$README")
  [ -n "$text" ] || fail "README.md has no block marked <!-- newcomer:$1 -->"
  printf '%s\n' "$text" | sed \
    -e "s/127\.0\.0\.1:8080/127.0.0.1:$API/g" \
    -e "s/127\.0\.0\.1:8443/127.0.0.1:$AGENT/g" \
    -e "s/127\.0\.0\.1:9443/127.0.0.1:$NGINX/g" \
    -e "s/127\.0\.0\.1:8090/127.0.0.1:$IDP/g"
}

# Background processes this script started, each in its own process group.
PIDS=()
STEP=""
cleanup() {
  local code=$?
  [ "$code" -ne 0 ] && [ -n "$STEP" ] && echo "newcomer: FAILED in $STEP (exit $code)" >&2
  if [ -f "$TOUR/nginx.conf" ] && [ -f "$TOUR/nginx.pid" ]; then
    (cd "$TOUR" && nginx -p "$TOUR" -c nginx.conf -e "$TOUR/error.log" -s stop 2>/dev/null) || true
  fi
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$code" -ne 0 ]; then
    for f in "$WORK"/*.out "$WORK"/*.log "$LOGS"/newcomer-*.log; do
      [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }
    done >&2
  fi
  rm -rf "$WORK"
  exit "$code"
}
trap cleanup EXIT

# Starts `bash -c TEXT` in its own process group; output to $WORK/$1.out.
background() {
  local name=$1 text=$2 log=$3
  setsid bash -c "$text" >"$WORK/$name.out" 2>"$log" &
  PIDS+=($!)
  LAST_PID=$!
}

# Waits up to 60 s for a line matching $2 in file $1, written by process $3.
wait_for() {
  for _ in $(seq 1 600); do
    grep -q -- "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || fail "the process writing $1 exited before '$2'"
    sleep 0.1
  done
  fail "no '$2' in $1 after 60 s"
}

stop_server() {
  kill -TERM -- "-$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# --- Install: the README's PATH line, with the binaries under test.
say "install (PATH line, binaries from $BIN_DIR)"
grep -q '^name = "certflow-server"' "$ROOT/crates/server/Cargo.toml" \
  && grep -q '^name = "certflow"' "$ROOT/crates/server/Cargo.toml" \
  && grep -q '^name = "certflow-agent"' "$ROOT/crates/agent/Cargo.toml" \
  || fail "the README's cargo install paths no longer build certflow and certflow-agent"
INSTALL=$(block install | grep -v '^cargo build')
RELEASE='$PWD/target/release'
grep -qF "$RELEASE" <<<"$INSTALL" || fail "the install block has no $RELEASE PATH line"
cd "$ROOT"
STEP="README block 'install'"
eval "${INSTALL//"$RELEASE"/$BIN_DIR}"
STEP=""
cd "$WORK"
[ "$(command -v certflow)" = "$BIN_DIR/certflow" ] || fail "certflow on PATH is $(command -v certflow)"
[ "$(command -v certflow-agent)" = "$BIN_DIR/certflow-agent" ] || fail "certflow-agent not on PATH"
[ "$(command -v dev-idp.sh)" = "$ROOT/scripts/dev-idp.sh" ] || fail "dev-idp.sh not on PATH"

# --- Run: embedded defaults, in ~/certflow-tour.
say "serve on embedded defaults"
background serve "$(block serve)" "$LOGS/newcomer-serve-$$.log"
SERVER=$LAST_PID
wait_for "$WORK/serve.out" "certflow: listening on" "$SERVER"
grep -q "certflow: agent listener on https://127.0.0.1:$AGENT" "$WORK/serve.out" \
  || fail "the agent listener did not start"
TOKEN_LINE=$(grep '^export CERTFLOW_TOKEN=cfb_' "$WORK/serve.out") || fail "no bootstrap token printed"
[ -d "$TOUR/certflow-data" ] || fail "no certflow-data in $TOUR"

# The tour's shell: every block runs in this one, as pasted one after
# another (set -e stops at the first failing command; the trap names the block).
tour() {
  say "tour: $1"
  local text
  text=$(block "$1")
  STEP="README block '$1'"
  eval "$text"
  STEP=""
}
TOKEN_BLOCK=$(block token)
PLACEHOLDER='export CERTFLOW_TOKEN=cfb_...'
grep -qF "$PLACEHOLDER" <<<"$TOKEN_BLOCK" || fail "the token block has no '$PLACEHOLDER' line"
say "tour: token (the line the server printed pasted in)"
STEP="README block 'token'"
eval "${TOKEN_BLOCK//"$PLACEHOLDER"/$TOKEN_LINE}"
STEP=""
[ "$PWD" = "$TOUR" ] || fail "the token block left the shell in $PWD"

tour cli
# The root is a self-signed CA certificate, and the issuing CA alone is not
# enough for openssl: the verification needs the root the README fetched.
[ "$(openssl x509 -in root.pem -noout -subject)" = "$(openssl x509 -in root.pem -noout -issuer | sed 's/^issuer=/subject=/')" ] \
  || fail "root.pem is not self-signed"
openssl verify -CAfile root.pem -untrusted www.pem www.pem | grep -q ': OK$' || fail "www.pem does not verify"
STATUS=$(certflow cert show "$ID" --output json | jq -r .status)
[ "$STATUS" = revoked ] || fail "the revoked certificate is $STATUS"

tour nginx
tour agent
served_serial() {
  openssl s_client -connect "127.0.0.1:$NGINX" -servername www.example.test </dev/null 2>/dev/null \
    | openssl x509 -noout -serial | sed 's/^serial=//' | tr 'A-F' 'a-f' | sed 's/^0*//'
}
current_serial() {
  certflow cert show "$1" --output json | jq -r '.versions | max_by(.version) | .serial' \
    | tr -d ':' | tr 'A-F' 'a-f' | sed 's/^0*//'
}
certflow agent list --output json | jq -e '[.items[] | select(.name == "web-01")] | length == 1' >/dev/null \
  || fail "web-01 is not in certflow agent list"
WWW=$(certflow cert list --team web --output json | jq -r '.items[0].id')
FIRST=$(served_serial)
[ -n "$FIRST" ] && [ "$FIRST" = "$(current_serial "$WWW")" ] \
  || fail "nginx serves serial '$FIRST', certflow's current one is $(current_serial "$WWW")"

RENEW_OUT="$WORK/renew.txt"
tour renew >"$RENEW_OUT"
cat "$RENEW_OUT"
SECOND=$(served_serial)
[ "$SECOND" != "$FIRST" ] && [ "$SECOND" = "$(current_serial "$WWW")" ] \
  || fail "after the renewal nginx serves '$SECOND' (before: $FIRST; current: $(current_serial "$WWW"))"
grep -q "nothing to do: 1 certificate up to date" "$RENEW_OUT" || fail "the dry run did not say there is nothing to do"

# --- The console: dev-idp.sh writes the whole configuration and prints the
# command; the server restarted with it, from another directory, keeps the
# same data and agent listener.
say "console: dev-idp.sh and the command it prints"
background idp "$(block console)" "$WORK/idp.log"
wait_for "$WORK/idp.out" "== dev identity provider on" "$LAST_PID"
CONFIG="$TOUR/certflow-dev.toml"
grep -q "^data_dir = \"$TOUR/certflow-data\"$" "$CONFIG" || fail "certflow-dev.toml has no absolute data_dir"
grep -q '^\[agent\]$' "$CONFIG" || fail "certflow-dev.toml has no [agent] section"
RUN=$(sed -n '/^== stop the certflow you started/{n;p;}' "$WORK/idp.out" | sed 's/^ *//')
[ "$RUN" = "certflow serve --config $CONFIG" ] || fail "dev-idp.sh printed '$RUN'"
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$IDP/.well-known/openid-configuration" >/dev/null && break
  sleep 0.1
done
stop_server "$SERVER"
mkdir -p "$WORK/elsewhere"
background serve-dev "cd '$WORK/elsewhere' && exec $RUN" "$LOGS/newcomer-serve-dev-$$.log"
wait_for "$WORK/serve-dev.out" "certflow: listening on" "$LAST_PID"
grep -q "certflow: agent listener on" "$WORK/serve-dev.out" || fail "no agent listener with certflow-dev.toml"
! grep -q CERTFLOW_TOKEN "$WORK/serve-dev.out" || fail "a new bootstrap token: the data directory changed"
[ ! -e "$WORK/elsewhere/certflow-data" ] || fail "the server made a new certflow-data where it was started"
N=$(certflow cert list --team payments --output json | jq '.items | length')
[ "$N" -ge 2 ] || fail "the payments certificates are gone after the restart ($N)"
certflow-agent --config "$TOUR/agent.toml" once >/dev/null 2>"$WORK/agent-again.out" \
  || fail "the agent no longer works after the restart"
LOCATION=$(curl -s -o /dev/null -w '%{redirect_url}' "http://127.0.0.1:$API/console/login")
case "$LOCATION" in
  "http://127.0.0.1:$IDP/"*) ;;
  *) fail "/console/login does not lead to the dev identity provider: '$LOCATION'" ;;
esac

# --- Shutting a host out.
say "certflow agent disable web-01"
certflow agent disable web-01 >/dev/null || fail "certflow agent disable web-01"
if certflow-agent --config "$TOUR/agent.toml" once >/dev/null 2>&1; then
  fail "a disabled agent still completes a cycle"
fi

say "the README's path works as written ($(($(date +%s) - STARTED)) s)"
