#!/usr/bin/env bash
# Server memory with many certificates and many polling agents (issue 16,
# goal 6: RSS <= 150 MB with 1,000,000 certificates and 10,000 agents).
#
#   1. Seeding (skipped when --seed-cache holds a snapshot of the same size):
#      `certflow serve` on a fresh embedded data directory (SQLite + local
#      blobs); bench/memory_agents.py issues 100 certificates (team "mem")
#      and enrols N agents through the real flow, each with its own P-256
#      key: a join token from the console API, POST /agent/v1/enroll (the
#      server signs the identity certificate and stores the agent), and the
#      assignment of one of the 100 certificates. The server is stopped and
#      M certificates (default 1,000,000) are bulk-inserted with the due
#      bench's SQL (crates/store/benches/seed/, one label each), issued by
#      the real default issuer and dated so none is due during the run
#      (the scheduler's steady state, not a renewal storm).
#   2. Measurement: `certflow serve` restarted on that data; VmRSS after it
#      has been idle for 15 s; then N kept-alive mTLS connections, one per
#      agent, each authenticating with its own identity certificate and
#      polling GET /agent/v1/assignments as certflow-agent does by default:
#      the first poll (200, ETag), then long polls with If-None-Match and
#      ?wait=55 (--wait 0 --interval S: plain polls every ~S s instead).
#      VmRSS is sampled every 2 s while all N are connected (--hold
#      seconds); reported: the peak and last VmRSS, VmHWM, RssAnon/RssFile,
#      threads; then again 10 s after the clients went away. On a loaded
#      machine a few client connections can stall for good; after 60 s
#      without a new one the client measures with those that are up (the
#      "connected" count of its summary line).
#   Heap profile: build the server without jemalloc
#   (cargo build --release -p certflow-server --no-default-features) and run
#   it with --env LD_PRELOAD=<libjemalloc.so.2> --env MALLOC_CONF=prof:true,...
#   (jeprof then reads the dumps; BENCHMARKS.md, "Memory: goal 6").
#
# Options:
#   --bin PATH         certflow binary (default target/release/certflow)
#   --certs M          certificates in the database (default 1000000)
#   --agents N         agents enrolled and connected (default 10000)
#   --wait S           long-poll seconds (default 55; 0: plain polls)
#   --interval S       seconds between plain polls (with --wait 0; default 10)
#   --hold S           seconds of polling once all N are connected (default 120)
#   --seed-cache DIR   keep the seeded data directory there and reuse it on
#                      later runs of the same size (seeding 10,000 agents
#                      takes minutes)
#   --env K=V          extra environment for the measured server (repeatable;
#                      e.g. MIMALLOC_PURGE_DELAY=0)
#   --keep             leave the work directory (logs) in place
#
# Loopback only. Needs python3 with `cryptography`, sqlite3, curl, jq.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/target/release/certflow
certs=1000000
agents=10000
wait_s=55
interval=10
hold=120
seed_cache=""
keep=0
extra_env=()
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) bin=$2; shift 2 ;;
    --certs) certs=$2; shift 2 ;;
    --agents) agents=$2; shift 2 ;;
    --wait) wait_s=$2; shift 2 ;;
    --interval) interval=$2; shift 2 ;;
    --hold) hold=$2; shift 2 ;;
    --seed-cache) seed_cache=$2; shift 2 ;;
    --env) extra_env+=("$2"); shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
die() { echo "memory: $*" >&2; exit 1; }
for c in python3 sqlite3 curl jq; do command -v "$c" >/dev/null || die "needs $c"; done
python3 -c 'import cryptography' 2>/dev/null || die "needs python3's cryptography package"
[ -x "$bin" ] || die "no certflow binary at $bin (cargo build --release -p certflow-server)"
# One descriptor per connection on each side, plus the server's own.
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((agents + 1000)) ] || die "ulimit -n $(ulimit -n) is too low for $agents connections"

work=$(mktemp -d /tmp/memory.XXXXXX)
cf_pid=""
client_pid=""
cleanup() {
    [ -n "$client_pid" ] && kill "$client_pid" 2>/dev/null || true
    if [ -n "$cf_pid" ]; then kill "$cf_pid" 2>/dev/null || true; wait "$cf_pid" 2>/dev/null || true; fi
    if [ "$keep" = 1 ]; then echo "memory: work directory kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_certflow NAME DATA-DIR: sets cf_pid, cf_url, cf_agent_url, cf_token (first start only)
start_certflow() {
    local name=$1 data=$2
    local port agent_port
    port=$(free_port)
    agent_port=$(free_port)
    (
        export CERTFLOW_DATA_DIR=$data CERTFLOW_SERVER__LISTEN=127.0.0.1:$port
        export CERTFLOW_AGENT__LISTEN=127.0.0.1:$agent_port CERTFLOW_METRICS__LISTEN=off
        # Seeding enrols every agent from one address with one token.
        export CERTFLOW_CONSOLE__RATE_LIMIT_PER_SEC=1000000 CERTFLOW_CONSOLE__RATE_LIMIT_BURST=1000000
        export CERTFLOW_AGENT__RATE_LIMIT_PER_SEC=1000000 CERTFLOW_AGENT__RATE_LIMIT_BURST=1000000
        for kv in "${extra_env[@]}"; do export "${kv?}"; done
        exec "$bin" serve >"$work/$name.out" 2>>"$work/$name.log"
    ) &
    cf_pid=$!
    for _ in $(seq 1 1800); do
        grep -q '^certflow: listening on ' "$work/$name.out" 2>/dev/null && break
        kill -0 "$cf_pid" 2>/dev/null || die "$name exited: $(tail -5 "$work/$name.log")"
        sleep 0.1
    done
    cf_url=$(sed -n 's/^certflow: listening on //p' "$work/$name.out" | tail -1)
    [ -n "$cf_url" ] || die "$name did not start"
    cf_agent_url=https://127.0.0.1:$agent_port
    cf_token=$(sed -n 's/^export CERTFLOW_TOKEN=//p' "$work/$name.out" | head -1)
}
stop_certflow() {
    kill "$cf_pid"; wait "$cf_pid" 2>/dev/null || true; cf_pid=""
}

# KiB of a /proc/PID/status field.
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# ---------------------------------------------------------------- seeding
seed() { # data-dir
    local data=$1
    echo "memory: seeding $agents agents and $certs certificates" >&2
    start_certflow seed "$data"
    [ -n "$cf_token" ] || die "no bootstrap token on the first start"
    python3 "$here/bench/memory_agents.py" enrol --console "$cf_url" --token "$cf_token" \
        --agent-url "$cf_agent_url" --count "$agents" --certs 100 --dir "$data/../clients" ||
        die "enrolment failed: $(tail -5 "$work/seed.log")"
    stop_certflow
    local db=$data/certflow.db issuer now t0
    issuer=$(sqlite3 "$db" "SELECT id FROM issuers WHERE is_default LIMIT 1")
    [ -n "$issuer" ] || die "no default issuer in $db"
    # "now" of the seed 31 days ahead: the 1% the due bench makes due are
    # then due in 1-31 days, and every active certificate is in the future.
    now=$(($(date +%s) + 31 * 86400))
    t0=$(date +%s)
    {
        echo "PRAGMA cache_size = -262144;"
        echo "BEGIN;"
        sed -e "s/\$1/$certs/g" -e "s/\$2/$now/g" -e "s/00000000-0000-7000-8000-000000000000/$issuer/" \
            "$here/crates/store/benches/seed/certificates.sqlite.sql"
        echo ";"
        # One label per seeded certificate (the 100 issued ones keep theirs).
        sed -e "s/^FROM certificates\$/FROM certificates WHERE name LIKE 'svc-%'/" \
            "$here/crates/store/benches/seed/labels.sql"
        echo ";"
        echo "COMMIT;"
        echo "PRAGMA wal_checkpoint(TRUNCATE);"
    } | sqlite3 "$db" >/dev/null || die "bulk insert failed"
    echo "memory: $certs certificates inserted in $(($(date +%s) - t0)) s" \
        "($(sqlite3 "$db" 'SELECT count(*) FROM certificates') in the database)" >&2
}

data=$work/seed/data
if [ -n "$seed_cache" ] && [ -f "$seed_cache/seeded-$agents-$certs" ]; then
    echo "memory: reusing the seeded data in $seed_cache" >&2
    mkdir -p "$work/seed" && cp -a "$seed_cache/data" "$seed_cache/clients" "$work/seed/"
else
    mkdir -p "$data"
    seed "$data"
    if [ -n "$seed_cache" ]; then
        rm -rf "$seed_cache" && mkdir -p "$seed_cache"
        cp -a "$data" "$work/seed/clients" "$seed_cache/" && touch "$seed_cache/seeded-$agents-$certs"
    fi
fi

# ---------------------------------------------------------------- measurement
start_certflow measured "$data"
sleep 15
idle_rss=$(status_kb "$cf_pid" VmRSS)
echo "memory: idle after start: VmRSS $(mb "$idle_rss") MB" >&2

report=$work/client.report
python3 "$here/bench/memory_agents.py" hold --agent-url "$cf_agent_url" --dir "$work/seed/clients" \
    --count "$agents" --wait "$wait_s" --interval "$interval" --hold "$hold" --report "$report" \
    2>"$work/client.log" &
client_pid=$!
while ! grep -q '^up' "$report" 2>/dev/null; do
    kill -0 "$client_pid" 2>/dev/null || die "the client exited early: $(tail -5 "$work/client.log")"
    kill -0 "$cf_pid" 2>/dev/null || die "certflow exited: $(tail -5 "$work/measured.log")"
    sleep 1
done
up_rss=$(status_kb "$cf_pid" VmRSS)
threads=$(status_kb "$cf_pid" Threads)
fds=$(find "/proc/$cf_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
peak=0 last=0 samples=0
end=$(($(date +%s) + ${hold%.*}))
while [ "$(date +%s)" -lt "$end" ] && kill -0 "$client_pid" 2>/dev/null; do
    last=$(status_kb "$cf_pid" VmRSS)
    [ "$last" -gt "$peak" ] && peak=$last
    samples=$((samples + 1))
    sleep 2
done
hwm=$(status_kb "$cf_pid" VmHWM)
anon=$(status_kb "$cf_pid" RssAnon)
file=$(status_kb "$cf_pid" RssFile)
wait "$client_pid" || true
client_pid=""
summary=$(tail -1 "$report")
sleep 10
after_rss=$(status_kb "$cf_pid" VmRSS)
stop_certflow

mode="long polls, ?wait=$wait_s"
[ "$wait_s" = 0 ] && mode="plain polls every ~$interval s"
echo
echo "| measure | value |"
echo "| --- | ---: |"
echo "| certificates in the database | $certs |"
echo "| agents connected (one mTLS connection each; $mode) | $agents |"
echo "| VmRSS idle after start (15 s) | $(mb "$idle_rss") MB |"
echo "| VmRSS when all $agents were connected | $(mb "$up_rss") MB |"
echo "| VmRSS while polling for $hold s: peak of $samples samples / last | $(mb "$peak") / $(mb "$last") MB |"
echo "| of which RssAnon / RssFile (last) | $(mb "$anon") / $(mb "$file") MB |"
echo "| VmHWM (peak since start) | $(mb "$hwm") MB |"
echo "| server threads / open descriptors when all were connected | $threads / $fds |"
echo "| VmRSS 10 s after the clients left | $(mb "$after_rss") MB |"
echo
echo "client: $summary"
echo "($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; $(basename "$bin") $(stat -c %s "$bin") bytes)"
