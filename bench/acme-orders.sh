#!/usr/bin/env bash
# ACME orders per second through certflow's ACME server, end to end on one
# machine (issue 15; BENCHMARKS.md "ACME server"). For each backend (SQLite
# on embedded defaults, then PostgreSQL) it starts `certflow serve` with
# [acme_server] and [server.tls], creates an EAB key, and runs
# crates/server/tests/e2e/acme/bench.py (python `acme` + josepy from the venv
# scripts/peers.sh makes): one http-01 authorization validated up front, then
# per order newOrder (authorization reused), finalize, poll, download. Prints
# bench.py's lines and the server's CPU per order (utime+stime from /proc).
#
#   bench/acme-orders.sh [--orders N] [--concurrency 1,8] [--only sqlite,postgres] [--bin PATH]
#
# Needs: scripts/peers.sh (the venv, pebble-challtestsrv on 127.0.0.1:8053 for
# name resolution), PostgreSQL on CERTFLOW_BENCH_PG (default
# postgres://postgres@127.0.0.1:5432), curl, jq, openssl.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
orders=200
concurrency=1,8
only=sqlite,postgres
bin=""
while [ $# -gt 0 ]; do
    case "$1" in
    --orders) orders=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    *) echo "acme-orders: unknown option $1" >&2; exit 2 ;;
    esac
done
die() { echo "acme-orders: $*" >&2; exit 1; }
venv=${CERTFLOW_ACME_VENV:-$HOME/.cache/certflow-peers/acme-venv}
[ -x "$venv/bin/python" ] || die "no ACME venv at $venv: run scripts/peers.sh"
for t in curl jq openssl psql; do command -v "$t" >/dev/null || die "$t is missing"; done
(exec 3<>/dev/tcp/127.0.0.1/8053) 2>/dev/null || die "pebble-challtestsrv is not on 127.0.0.1:8053: run scripts/peers.sh"
pg_base=${CERTFLOW_BENCH_PG:-postgres://postgres@127.0.0.1:5432}
if [ -z "$bin" ]; then
    bin=$here/target/release/certflow
    [ -x "$bin" ] || (cd "$here" && cargo build --release -p certflow-server) || die "cannot build certflow"
fi

work=$(mktemp -d /tmp/acme-orders.XXXXXX)
pid=""
db=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    [ -n "$db" ] && psql -q "$pg_base/postgres" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
hz=$(getconf CLK_TCK)

run() { # backend
    local backend=$1 dir=$work/$1 port pki http01 token url
    mkdir -p "$dir"
    port=$(free_port) pki=$(free_port) http01=$(free_port)
    cat >"$dir/certflow.toml" <<EOF
data_dir = "$dir/data"
[server]
listen = "127.0.0.1:$port"
public_url = "https://localhost:$port"
[server.tls]
server_names = ["localhost"]
http_listen = "127.0.0.1:$pki"
[agent]
listen = "off"
[acme_server]
enabled = true
http01_port = $http01
dns_resolver = "127.0.0.1:8053"
per_account_per_minute = 1000000
per_address_per_minute = 1000000
[outbound]
allow = ["127.0.0.1"]
[policy.teams.bench]
allowed_domains = ["web.example.com"]
EOF
    if [ "$backend" = postgres ]; then
        db=acme_bench_$$
        psql -q "$pg_base/postgres" -c "CREATE DATABASE $db" >/dev/null
        export CERTFLOW_DATABASE__URL=$pg_base/$db
        export CERTFLOW_MASTER_KEY
        CERTFLOW_MASTER_KEY=$(openssl rand -base64 32)
    else
        unset CERTFLOW_DATABASE__URL
    fi
    CERTFLOW_CONFIG=$dir/certflow.toml nohup "$bin" serve >"$dir/out" 2>"$dir/log" &
    pid=$!
    for _ in $(seq 1 600); do
        grep -q '^certflow: listening on ' "$dir/out" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || die "$backend: certflow exited: $(tail -5 "$dir/log")"
        sleep 0.1
    done
    token=$(sed -n 's/^export CERTFLOW_TOKEN=//p' "$dir/out" | head -1)
    url=https://localhost:$port
    [ -n "$token" ] || die "$backend: no bootstrap token"
    # The listener's CA: read once without verification (the bench trusts
    # what it started), then every ACME request verifies against it.
    curl -sfk -H "Authorization: Bearer $token" "$url/console/api/v1/issuers" \
        | jq -r '.[0].chain_pem, .[0].issuing_cert_pem' >"$dir/ca.pem"
    local eab
    eab=$(curl -sf --cacert "$dir/ca.pem" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d '{"team":"bench"}' "$url/console/api/v1/acme/eab-keys" | jq -r '.key_id + ":" + .hmac_key')
    local before after
    before=$(ticks "$pid")
    echo "== $backend"
    (cd "$here/crates/server/tests/e2e/acme" && "$venv/bin/python" bench.py --directory "$url/acme/certflow/directory" \
        --ca "$dir/ca.pem" --http01-port "$http01" --eab "$eab" --orders "$orders" --concurrency "$concurrency")
    after=$(ticks "$pid")
    local runs
    runs=$(( $(tr ',' '\n' <<<"$concurrency" | wc -l) * orders ))
    echo "$backend: server CPU $(( (after - before) * 1000 / hz )) ms for $runs orders = $(( (after - before) * 1000000 / hz / runs )) us per order (incl. the one validation)"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    if [ -n "$db" ]; then psql -q "$pg_base/postgres" -c "DROP DATABASE IF EXISTS $db" >/dev/null; db=""; fi
}

for b in ${only//,/ }; do run "$b"; done
