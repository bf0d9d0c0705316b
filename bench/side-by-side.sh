#!/usr/bin/env bash
# Side-by-side load on loopback: certflow against a peer doing the same job,
# measured in the same run (issue 16). Prints one table: requests/s, the
# server's CPU per request (utime+stime from /proc, the server's own process
# or processes only), p50 latency, and certflow's ratio to the peer.
#
#   issuance  POST /console/api/v1/certificates with a P-256 CSR (wrk, 4 and
#             16 connections) vs `cfssl serve` signing the same CSR
#             (/api/v1/cfssl/sign, no storage); certflow on embedded defaults
#             (SQLite + local blobs) and on PostgreSQL (local blobs).
#   polls     GET /agent/v1/assignments with If-None-Match -> 304 over mTLS
#             keep-alive with an enrolled agent's identity (oha, 1/8/32
#             connections) vs nginx answering a static 304 with
#             ssl_verify_client on against the same agent-identity CA; and
#             the same poll by an agent enrolled with an OIDC client-credentials
#             token, sending it on every request (a local ES256 issuer: JWKS
#             from python3 -m http.server), as a ratio to certificate-only.
#
# Options:
#   --duration S     seconds per load (default 10)
#   --bin PATH       certflow binary (default target/release/certflow, built if missing)
#   --only LIST      comma list of: sqlite,sqlite-files,postgres,postgres-files,polls
#                    (default sqlite,postgres,polls; -files: blob.kind = "local")
#   --kill9          also: kill -9 certflow (embedded defaults) during issuance
#                    load, restart it, and check every certificate whose 201
#                    the client received: the row, its certificate, chain and
#                    (server-generated keys) decrypted key read back
#   --keep           leave the work directory (logs, data) in place
#   --perf DIR       also record a call-graph profile (perf record -g) of
#                    certflow during each of its loads, one file per load in DIR
# Environment: CERTFLOW_BENCH_PG (default postgres://postgres@127.0.0.1:5432),
# OHA (path of oha; else PATH, ~/.cargo/bin; else `cargo install oha`).
#
# Client and servers share the machine's cores: compare the ratios and the
# CPU per request within one run, not absolute rates across runs.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
duration=10
bin=""
only="sqlite,postgres,polls"
kill9=0
keep=0
perf_dir=""
while [ $# -gt 0 ]; do
    case "$1" in
    --duration) duration=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --kill9) kill9=1; shift ;;
    --keep) keep=1; shift ;;
    --perf) perf_dir=$(realpath -m "$2"); mkdir -p "$perf_dir"; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
pg_base=${CERTFLOW_BENCH_PG:-postgres://postgres@127.0.0.1:5432}
wants() { case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

die() { echo "side-by-side: $*" >&2; exit 1; }

# ---------------------------------------------------------------- peers
need_apt() { # command package
    command -v "$1" >/dev/null && return 0
    echo "side-by-side: installing $2" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null || die "cannot install $2"
}
need_apt wrk wrk
need_apt cfssl golang-cfssl
need_apt cfssljson golang-cfssl
need_apt nginx nginx
need_apt openssl openssl
need_apt psql postgresql-client
need_apt curl curl
need_apt jq jq
oha=${OHA:-}
if [ -z "$oha" ]; then
    oha=$(command -v oha || true)
    [ -z "$oha" ] && [ -x "$HOME/.cargo/bin/oha" ] && oha=$HOME/.cargo/bin/oha
    if [ -z "$oha" ] && wants polls; then
        echo "side-by-side: cargo install oha (about 5 minutes)" >&2
        nice -n 10 cargo install oha --locked -q || die "cannot install oha"
        oha=$HOME/.cargo/bin/oha
    fi
fi
if [ -z "$bin" ]; then
    bin=$here/target/release/certflow
    if [ ! -x "$bin" ]; then
        (cd "$here" && cargo build --release -p certflow-server) || die "cannot build certflow"
    fi
fi
[ -x "$bin" ] || die "no certflow binary at $bin"

work=$(mktemp -d /tmp/side-by-side.XXXXXX)
pids=()
dbs=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for d in "${dbs[@]}"; do psql -q "$pg_base/postgres" -c "DROP DATABASE IF EXISTS $d" >/dev/null 2>&1 || true; done
    if [ "$keep" = 1 ]; then echo "side-by-side: work directory kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# utime+stime of the given processes, in clock ticks.
ticks() {
    local total=0 p rest
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] || continue
        rest=$(sed 's/^.*) //' "/proc/$p/stat")
        # shellcheck disable=SC2086
        set -- $rest
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}
hz=$(getconf CLK_TCK)
# A process and its children (nginx: master and workers).
tree() { echo "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); }

rows=()
# row LABEL RPS REQS TICKS P50 ERRORS
row() {
    local cpu_us
    cpu_us=$(awk -v t="$4" -v n="$3" -v hz="$hz" 'BEGIN { if (n > 0) printf "%.0f", t * 1e6 / hz / n; else print "-" }')
    rows+=("$1|$2|$cpu_us|$5|$6")
    printf '  %-44s %9s req/s  %7s us CPU/req  p50 %s  errors %s\n' "$1" "$2" "$cpu_us" "$5" "$6" >&2
}

# perf_start LABEL PIDS-FUNCTION: with --perf, profiles certflow's load
# (only certflow's: the peers are not ours to profile) until perf_stop.
perf_pid=""
perf_start() {
    [ -n "$perf_dir" ] && [ "$2" = cf_pids ] || return 0
    local file
    file=$perf_dir/$(echo "$1" | tr -cs 'A-Za-z0-9=' '-' | sed 's/-$//').data
    perf record -q -g -o "$file" -p "$(cf_pids | tr ' ' ,)" >/dev/null 2>&1 &
    perf_pid=$!
}
perf_stop() {
    [ -n "$perf_pid" ] || return 0
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    perf_pid=""
}

# wrk_run LABEL PIDS-FUNCTION CONNECTIONS SCRIPT URL [script args]
wrk_run() {
    local label=$1 pidf=$2 c=$3 script=$4 url=$5; shift 5
    local out t0 t1 reqs rps p50 errs
    t0=$(ticks $($pidf))
    perf_start "$label" "$pidf"
    out=$(wrk -t "$((c < 2 ? c : 2))" -c "$c" -d "${duration}s" --latency -s "$script" "$url" -- "$@" 2>&1) || true
    t1=$(ticks $($pidf))
    perf_stop
    echo "$out" >>"$work/wrk.log"
    reqs=$(echo "$out" | awk '/requests in/ { print $1 }')
    rps=$(echo "$out" | awk '/^Requests\/sec/ { printf "%.0f", $2 }')
    p50=$(echo "$out" | awk '$1 == "50%" { print $2 }')
    errs=$(echo "$out" | awk '/Non-2xx or 3xx/ { n += $NF } /Socket errors/ { gsub(/[^0-9 ]/, " "); n += $1 + $2 + $3 + $4 } END { print n + 0 }')
    row "$label" "${rps:-0}" "${reqs:-0}" "$((t1 - t0))" "${p50:--}" "$errs"
}

# oha_run LABEL PIDS-FUNCTION CONNECTIONS URL CERT KEY ETAG [EXTRA-HEADER]
oha_run() {
    local label=$1 pidf=$2 c=$3 url=$4 cert=$5 key=$6 etag=$7
    local out t0 t1 rps reqs p50 errs extra=()
    [ -n "${8:-}" ] && extra=(-H "$8")
    t0=$(ticks $($pidf))
    perf_start "$label" "$pidf"
    out=$("$oha" -z "${duration}s" -c "$c" --no-tui --output-format json --insecure \
        --cert "$cert" --key "$key" -H "If-None-Match: $etag" "${extra[@]}" "$url" 2>>"$work/oha.err") || true
    t1=$(ticks $($pidf))
    perf_stop
    echo "$out" >>"$work/oha.log"
    rps=$(echo "$out" | jq -r '.summary.requestsPerSec | floor')
    reqs=$(echo "$out" | jq -r '[.statusCodeDistribution[]] | add // 0')
    p50=$(echo "$out" | jq -r '(.latencyPercentiles.p50 // 0) * 1e6 | floor | tostring + "us"')
    errs=$(echo "$out" | jq -r '([.statusCodeDistribution | to_entries[] | select(.key != "304") | .value] | add // 0) + ([.errorDistribution[]?] | add // 0)')
    row "$label" "${rps:-0}" "${reqs:-0}" "$((t1 - t0))" "${p50:--}" "$errs"
}

# ---------------------------------------------------------------- shared inputs
cd "$work"
master_key=$(openssl rand -base64 32)
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -out leaf.csr \
    -subj /CN=bench.example.com -addext subjectAltName=DNS:bench.example.com 2>/dev/null
csr_json=$(jq -Rs . <leaf.csr)

cat >issue.lua <<'EOF'
-- certflow: a new certificate name per request (names are unique per team);
-- args: token, run tag, csr (JSON string), [file for the ids of 201s]
-- `id` is the global that setup() gives each thread.
local counter = 0
local token, tag, csr, out
function setup(thread) nthreads = (nthreads or 0) + 1; thread:set("id", nthreads) end
function init(args)
  token, tag, csr = args[1], args[2], args[3]
  if args[4] then out = io.open(args[4] .. "." .. id, "a") end
end
function request()
  counter = counter + 1
  local body = '{"team":"bench","name":"b' .. tag .. '-' .. id .. '-' .. counter ..
    '","names":["bench.example.com"]' .. (csr ~= "" and (',"csr":' .. csr) or ',"key_type":"ecdsa-p256"') .. '}'
  return wrk.format("POST", "/console/api/v1/certificates",
    { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token }, body)
end
if os.getenv("SBS_RECORD") then
  function response(status, headers, body)
    if status == 201 and out then
      local cid = body:match('"id":"([0-9a-f-]+)"')
      if cid then out:write(cid, "\n"); out:flush() end
    end
  end
end
EOF
cat >cfssl.lua <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"certificate_request":' .. [==[$csr_json]==] .. '}'
EOF

# ---------------------------------------------------------------- OIDC issuer (polls)
# A local ES256 issuer for token-enrolled agents: a P-256 key, its JWKS served
# by python3 -m http.server, and client-credentials access tokens signed with
# openssl (DER signature turned into JOSE's r || s).
start_issuer() {
    mkdir -p issuer/www && cd issuer
    openssl ecparam -name prime256v1 -genkey -noout -out es256.pem 2>/dev/null
    issuer_port=$(free_port)
    issuer_url=http://127.0.0.1:$issuer_port
    python3 - >www/jwks <<'PY'
import base64, json, subprocess
der = subprocess.run(["openssl", "ec", "-in", "es256.pem", "-pubout", "-outform", "DER"],
                     capture_output=True, check=True).stdout
point = der[-65:]  # a P-256 SubjectPublicKeyInfo ends with 04 || x || y
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
print(json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "kid": "sbs-1", "alg": "ES256",
                            "use": "sig", "x": b(point[1:33]), "y": b(point[33:65])}]}))
PY
    nohup python3 -m http.server "$issuer_port" --bind 127.0.0.1 --directory www >"$work/issuer.log" 2>&1 &
    pids+=("$!")
    cd "$work"
    wait_port "$issuer_port" || die "the JWKS server did not start"
    cat >certflow.toml <<EOF
[[auth.issuers]]
issuer = "$issuer_url"
jwks_url = "$issuer_url/jwks"
audience = "urn:certflow:api"
[auth.issuers.service_roles.sbs-agent]
role = "viewer"
teams = ["bench"]
EOF
}
# A client-credentials access token of sbs-agent, valid one hour.
issuer_token() {
    (cd "$work/issuer" && python3 - "$issuer_url" <<'PY'
import base64, json, subprocess, sys, time
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
now = int(time.time())
head = b(json.dumps({"alg": "ES256", "typ": "at+jwt", "kid": "sbs-1"}).encode())
body = b(json.dumps({"iss": sys.argv[1], "sub": "sbs-agent", "client_id": "sbs-agent",
                     "aud": "urn:certflow:api", "iat": now, "exp": now + 3600,
                     "jti": str(now), "scope": "certs:read"}).encode())
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", "es256.pem"],
                     input=f"{head}.{body}".encode(), capture_output=True, check=True).stdout
# DER: 30 len 02 lr r 02 ls s -> r || s, 32 bytes each.
i = 4 + sig[3]
r, s = sig[4:i], sig[i + 2:i + 2 + sig[i + 1]]
raw = r.lstrip(b"\0").rjust(32, b"\0") + s.lstrip(b"\0").rjust(32, b"\0")
print(f"{head}.{body}.{b(raw)}")
PY
    )
}

# ---------------------------------------------------------------- cfssl
start_cfssl() {
    mkdir -p cfssl && cd cfssl
    echo '{"CN":"bench CA","key":{"algo":"ecdsa","size":256}}' | cfssl gencert -initca - 2>/dev/null | cfssljson -bare ca
    echo '{"signing":{"default":{"expiry":"2160h","usages":["digital signature","server auth"]}}}' >config.json
    cfssl_port=$(free_port)
    nohup cfssl serve -address 127.0.0.1 -port "$cfssl_port" -ca ca.pem -ca-key ca-key.pem \
        -config config.json -loglevel 2 >"$work/cfssl.log" 2>&1 &
    cfssl_pid=$!
    pids+=("$cfssl_pid")
    cd "$work"
    wait_port "$cfssl_port" || die "cfssl did not start: $(tail -5 "$work/cfssl.log")"
    local got
    got=$(curl -s -d "{\"certificate_request\":$csr_json}" "http://127.0.0.1:$cfssl_port/api/v1/cfssl/sign" | jq -r .success)
    [ "$got" = true ] || die "cfssl refused the CSR"
}
cfssl_pids() { echo "$cfssl_pid"; }

# ---------------------------------------------------------------- certflow
# start_certflow NAME DATA-DIR [DATABASE-URL]: sets cf_pid, cf_url, cf_agent_port, cf_token
start_certflow() {
    local name=$1 data=$2 db=${3:-}
    cf_port=$(free_port)
    cf_agent_port=$(free_port)
    mkdir -p "$data"
    (
        export CERTFLOW_DATA_DIR=$data CERTFLOW_SERVER__LISTEN=127.0.0.1:$cf_port
        export CERTFLOW_AGENT__LISTEN=127.0.0.1:$cf_agent_port CERTFLOW_METRICS__LISTEN=off
        # Load from one token and one agent: the per-subject limits would answer 429.
        export CERTFLOW_CONSOLE__RATE_LIMIT_PER_SEC=1000000 CERTFLOW_CONSOLE__RATE_LIMIT_BURST=1000000
        export CERTFLOW_AGENT__RATE_LIMIT_PER_SEC=1000000 CERTFLOW_AGENT__RATE_LIMIT_BURST=1000000
        # PostgreSQL wants the master key given (replicas share it); the same
        # key on every start, so a restarted server reads what it sealed.
        export CERTFLOW_MASTER_KEY=$master_key
        [ -n "$db" ] && export CERTFLOW_DATABASE__URL=$db
        [ -f "$work/certflow.toml" ] && export CERTFLOW_CONFIG=$work/certflow.toml
        exec nohup "$bin" serve >"$work/$name.out" 2>>"$work/$name.log"
    ) &
    cf_pid=$!
    pids+=("$cf_pid")
    # Up to 3 minutes: a restart after kill -9 on a busy machine is slow.
    for _ in $(seq 1 1800); do
        grep -q '^certflow: listening on ' "$work/$name.out" 2>/dev/null && break
        kill -0 "$cf_pid" 2>/dev/null || die "$name exited: $(tail -5 "$work/$name.log")"
        sleep 0.1
    done
    cf_url=$(sed -n 's/^certflow: listening on //p' "$work/$name.out" | tail -1)
    local t
    t=$(sed -n 's/^export CERTFLOW_TOKEN=//p' "$work/$name.out" | head -1)
    [ -n "$t" ] && cf_token=$t
    [ -n "$cf_url" ] || die "$name did not start"
}
cf_pids() { echo "$cf_pid"; }

issue_check() { # url token
    local status
    status=$(curl -s -o "$work/first.json" -w '%{http_code}' -H "Authorization: Bearer $2" -H 'Content-Type: application/json' \
        -d "{\"team\":\"bench\",\"name\":\"probe-$RANDOM$RANDOM\",\"names\":[\"bench.example.com\"],\"csr\":$csr_json}" \
        "$1/console/api/v1/certificates")
    [ "$status" = 201 ] || die "certflow refused the probe issuance ($status): $(cat "$work/first.json")"
}

tag=0
issuance_loads() { # label-prefix
    for c in 4 16; do
        tag=$((tag + 1))
        wrk_run "issuance c=$c  certflow $1" cf_pids "$c" issue.lua "$cf_url" "$cf_token" "$tag$RANDOM" "$csr_json"
        [ -n "${cfssl_pid:-}" ] && wrk_run "issuance c=$c  cfssl serve" cfssl_pids "$c" cfssl.lua "http://127.0.0.1:$cfssl_port/api/v1/cfssl/sign"
    done
}

if wants sqlite || wants sqlite-files || wants postgres || wants postgres-files || [ "$kill9" = 1 ]; then start_cfssl; fi

if wants polls; then start_issuer; fi
if wants sqlite || wants polls; then
    echo "certflow, embedded defaults (SQLite, blobs in the database)" >&2
    start_certflow sqlite "$work/data-sqlite"
    issue_check "$cf_url" "$cf_token"
    wants sqlite && issuance_loads "(SQLite)"
fi

# ---------------------------------------------------------------- polls vs nginx
if wants polls; then
    echo "agent polls" >&2
    jt=$(curl -sf -H "Authorization: Bearer $cf_token" -H 'Content-Type: application/json' \
        -d '{"name":"bench-agent","teams":["bench"]}' "$cf_url/console/api/v1/agents/join-tokens" | jq -r .token)
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout agent.key -out agent.csr \
        -subj /CN=bench-agent 2>/dev/null
    curl -sfk -H "Authorization: Bearer $jt" -H 'Content-Type: application/json' \
        -d "{\"csr\":$(jq -Rs . <agent.csr)}" "https://127.0.0.1:$cf_agent_port/agent/v1/enroll" >enrolled.json ||
        die "enrolment failed"
    jq -r .certificate_pem enrolled.json >agent.pem
    jq -r .ca_chain_pem enrolled.json >agent-ca.pem
    poll_url=https://127.0.0.1:$cf_agent_port/agent/v1/assignments
    etag=$(curl -sfk -D - -o /dev/null --cert agent.pem --key agent.key "$poll_url" | tr -d '\r' | sed -n 's/^[Ee][Tt][Aa][Gg]: //p')
    [ -n "$etag" ] || die "no ETag from $poll_url"
    code=$(curl -sk -o /dev/null -w '%{http_code}' --cert agent.pem --key agent.key -H "If-None-Match: $etag" "$poll_url")
    [ "$code" = 304 ] || die "poll with If-None-Match answered $code, not 304"
    # The token-enrolled agent: its own key and certificate, the token on every request.
    access_token=$(issuer_token)
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout token-agent.key -out token-agent.csr \
        -subj /CN=bench-token-agent 2>/dev/null
    curl -sfk -H "Authorization: Bearer $access_token" -H 'Content-Type: application/json' \
        -d "{\"csr\":$(jq -Rs . <token-agent.csr)}" "https://127.0.0.1:$cf_agent_port/agent/v1/enroll" >token-enrolled.json ||
        die "enrolment with an access token failed: $(tail -3 "$work/sqlite.log")"
    jq -r .certificate_pem token-enrolled.json >token-agent.pem
    token_etag=$(curl -sfk -D - -o /dev/null --cert token-agent.pem --key token-agent.key \
        -H "Authorization: Bearer $access_token" "$poll_url" | tr -d '\r' | sed -n 's/^[Ee][Tt][Aa][Gg]: //p')
    [ -n "$token_etag" ] || die "no ETag for the token-enrolled agent"
    code=$(curl -sk -o /dev/null -w '%{http_code}' --cert token-agent.pem --key token-agent.key "$poll_url")
    [ "$code" = 401 ] || die "the token-enrolled agent without its token answered $code, not 401"

    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout nginx.key -out nginx.pem \
        -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
    nginx_port=$(free_port)
    mkdir -p nginx
    cat >nginx.conf <<EOF
user root;
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
    access_log $work/nginx/access.log;
    client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
    uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$nginx_port ssl;
        ssl_certificate $work/nginx.pem;
        ssl_certificate_key $work/nginx.key;
        ssl_client_certificate $work/agent-ca.pem;
        ssl_verify_client on;
        ssl_verify_depth 3;
        location = /agent/v1/assignments { add_header ETag '$etag' always; return 304; }
    }
}
EOF
    nohup nginx -c "$work/nginx.conf" -p "$work/nginx" -g 'daemon off;' >"$work/nginx/out.log" 2>&1 &
    nginx_pid=$!
    pids+=("$nginx_pid")
    wait_port "$nginx_port" || die "nginx did not start: $(cat "$work/nginx/error.log")"
    code=$(curl -sk -o /dev/null -w '%{http_code}' --cert agent.pem --key agent.key "https://127.0.0.1:$nginx_port/agent/v1/assignments")
    [ "$code" = 304 ] || die "nginx answered $code to the agent's certificate"
    code=$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$nginx_port/agent/v1/assignments")
    [ "$code" = 400 ] || die "nginx answered $code without a client certificate (want 400)"
    nginx_pids() { tree "$nginx_pid"; }
    for c in 1 8 32; do
        oha_run "agent 304 c=$c  certflow" cf_pids "$c" "$poll_url" agent.pem agent.key "$etag"
        oha_run "agent 304 c=$c  nginx" nginx_pids "$c" "https://127.0.0.1:$nginx_port/agent/v1/assignments" agent.pem agent.key "$etag"
        oha_run "agent 304 c=$c  certflow + token" cf_pids "$c" "$poll_url" token-agent.pem token-agent.key "$token_etag" \
            "Authorization: Bearer $access_token"
    done
    kill "$nginx_pid" 2>/dev/null || true
fi

if wants sqlite || wants polls; then kill "$cf_pid"; wait "$cf_pid" 2>/dev/null || true; fi

# ---------------------------------------------------------------- blob files
if wants sqlite-files; then
    # The same, with blobs as files (blob.kind = "local", fsynced each).
    echo "certflow, SQLite + blobs in files" >&2
    export CERTFLOW_BLOB__KIND=local
    start_certflow sqlite-files "$work/data-sqlite-files"
    unset CERTFLOW_BLOB__KIND
    issue_check "$cf_url" "$cf_token"
    issuance_loads "(SQLite, blob files)"
    kill "$cf_pid"; wait "$cf_pid" 2>/dev/null || true
fi

# ---------------------------------------------------------------- PostgreSQL
# postgres: blobs in the database (the default); postgres-files: in files.
for variant in postgres postgres-files; do
    wants "$variant" || continue
    db=certflow_sbs_$$_$RANDOM
    psql -q "$pg_base/postgres" -c "CREATE DATABASE $db" >/dev/null || die "cannot create database $db at $pg_base"
    dbs+=("$db")
    if [ "$variant" = postgres ]; then
        echo "certflow on PostgreSQL (blobs in the database)" >&2
        start_certflow postgres "$work/data-pg" "$pg_base/$db"
        issue_check "$cf_url" "$cf_token"
        issuance_loads "(PostgreSQL)"
    else
        echo "certflow on PostgreSQL (blobs in files)" >&2
        export CERTFLOW_BLOB__KIND=local
        start_certflow postgres-files "$work/data-pg-files" "$pg_base/$db"
        unset CERTFLOW_BLOB__KIND
        issue_check "$cf_url" "$cf_token"
        issuance_loads "(PostgreSQL, blob files)"
    fi
    kill "$cf_pid"; wait "$cf_pid" 2>/dev/null || true
done

# ---------------------------------------------------------------- kill -9
kill9_result=""
if [ "$kill9" = 1 ]; then
    echo "kill -9 during issuance (embedded defaults, server-generated keys)" >&2
    data=$work/data-kill9
    start_certflow kill9 "$data"
    rm -f "$work"/acked.*
    SBS_RECORD=1 wrk -t 2 -c 16 -d "${duration}s" -s issue.lua "$cf_url" -- "$cf_token" "k$RANDOM" "" "$work/acked" \
        >"$work/kill9-wrk.log" 2>&1 &
    wrk_pid=$!
    sleep "$(awk -v d="$duration" 'BEGIN { print d / 2 }')"
    kill -9 "$cf_pid"
    wait "$wrk_pid" 2>/dev/null || true
    cat "$work"/acked.* 2>/dev/null | sort -u >"$work/acked"
    acked=$(wc -l <"$work/acked")
    start_certflow kill9 "$data"
    lost=0
    while read -r id; do
        ok=1
        curl -sf -H "Authorization: Bearer $cf_token" "$cf_url/console/api/v1/certificates/$id" >/dev/null || ok=0
        for f in certificate fullchain key; do
            curl -sf -H "Authorization: Bearer $cf_token" -o "$work/got.$f" \
                "$cf_url/console/api/v1/certificates/$id/download?format=$f" || ok=0
        done
        if [ "$ok" = 1 ]; then
            # The key decrypted and is the certificate's.
            a=$(openssl x509 -in "$work/got.certificate" -noout -pubkey 2>/dev/null | openssl sha256)
            b=$(openssl pkey -in "$work/got.key" -pubout 2>/dev/null | openssl sha256)
            [ "$a" = "$b" ] || ok=0
        fi
        [ "$ok" = 1 ] || { lost=$((lost + 1)); echo "lost: $id" >&2; }
    done <"$work/acked"
    kill "$cf_pid"; wait "$cf_pid" 2>/dev/null || true
    kill9_result="kill -9 after $(awk -v d="$duration" 'BEGIN { print d / 2 }') s of issuance at 16 connections: $acked certificates acknowledged (201), $lost missing or unreadable after restart"
    echo "$kill9_result" >&2
fi

# ---------------------------------------------------------------- table
echo
echo "| load | server | requests/s | server CPU/request | p50 | errors | ratio to peer (req/s) |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
# Each certflow row is followed by its peer's row for the same load; a
# "+ token" poll row comes after those two and is compared with certflow's
# certificate-only row.
for i in "${!rows[@]}"; do
    IFS='|' read -r label rps cpu p50 errs <<<"${rows[$i]}"
    load=${label%%  *}
    server=${label#*  }
    ratio=""
    next=${rows[$((i + 1))]:-}
    case "$server|$next" in
    "certflow + token|"*)
        pr=$(echo "${rows[$((i - 2))]}" | cut -d'|' -f2)
        ratio=$(awk -v a="$rps" -v b="$pr" 'BEGIN { if (b > 0) printf "%.2fx certificate-only", a / b }')
        ;;
    "certflow"*"|$load  "*)
        pr=$(echo "$next" | cut -d'|' -f2)
        ratio=$(awk -v a="$rps" -v b="$pr" 'BEGIN { if (b > 0) printf "%.2fx", a / b }')
        ;;
    esac
    echo "| $load | $server | $rps | $cpu us | $p50 | $errs | $ratio |"
done
[ -n "$kill9_result" ] && echo && echo "$kill9_result"
echo
echo "($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; ${duration} s per load)"
