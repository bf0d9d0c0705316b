#!/usr/bin/env bash
# Chaos harness (issue 17 §2): three `certflow serve` replicas (api, scheduler
# and worker each) on one PostgreSQL (a throwaway cluster of its own, so it can
# be restarted), blobs in S3 and the renewal queue in SQS (moto), short-lived
# certificates renewing continuously. While it runs, a random replica is killed
# with SIGKILL every few seconds and started again, PostgreSQL is restarted
# once (immediate shutdown, down 15 s as in a failover, crash recovery on
# start), moto is frozen once (SIGSTOP, then
# SIGCONT: an outage, not a loss of state), and a client issues certificates
# through the API, remembering every 201. After a quiet period the replicas are
# stopped and the invariants checked:
#   - each certificate's versions are 1..n, its current version the last;
#   - exactly one new version per renewal that came due (0 duplicate, 0 lost);
#   - every version's certificate and chain read back, every key opens and
#     matches (`certflow admin verify-store`);
#   - no orphan blob after the sweeper's grace (sweep with everything stopped,
#     then verify-store again: none left, nothing referenced deleted);
#   - `certflow admin verify-audit` passes;
#   - no renewal job stuck (each done, or dead-lettered with a reason);
#   - every certificate the client got a 201 for is there.
# The last line is `chaos: N renewals, K kills, L lost, D duplicate`; the exit
# status is non-zero on any violation.
#
# Usage: scripts/chaos.sh [--short] [--seconds N] [--certs N] [--validity S]
#                         [--quiet S] [--freeze S] [--keep]
#   --short      ≤ 5 minutes in all: 150 s of chaos, 150 certificates
#   --seconds N  seconds of chaos (default 600; the long run)
#   --certs N    certificates created before the chaos (default 600)
#   --validity S their lifetime in seconds (default 180; renewed at about 2/3)
#   --quiet S    quiet period before the checks (default 60)
#   --freeze S   how long moto stays frozen (default 30)
#   --pg-down S  how long PostgreSQL stays down in its restart (default 15)
#   --keep       keep the work directory (logs, database) afterwards
#   --agent      instead: kill -9 the real certflow-agent at random moments
#                while it installs certificates renewed every few seconds into
#                nginx, for --seconds (nginx, openssl; no PostgreSQL or moto)
# CERTFLOW_BIN=path uses that binary instead of building target/debug/certflow.
# Peers: PostgreSQL 15 (/usr/lib/postgresql/15/bin), moto_server, python3 with
# boto3 and requests (scripts/peers.sh installs them). A missing one fails.
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS_CHAOS=600 CERTS=600 VALIDITY=180 QUIET=60 FREEZE=30 PG_DOWN=15 KEEP=0 MODE=replicas
while [ $# -gt 0 ]; do
    case "$1" in
    --short) SECONDS_CHAOS=150 CERTS=150 ;;
    --seconds) SECONDS_CHAOS=$2; shift ;;
    --certs) CERTS=$2; shift ;;
    --validity) VALIDITY=$2; shift ;;
    --quiet) QUIET=$2; shift ;;
    --freeze) FREEZE=$2; shift ;;
    --pg-down) PG_DOWN=$2; shift ;;
    --keep) KEEP=1 ;;
    --agent) MODE=agent ;;
    *) echo "chaos: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

PGBIN=/usr/lib/postgresql/15/bin
for need in "$PGBIN/initdb" "$PGBIN/pg_ctl" psql moto_server python3; do
    command -v "$need" >/dev/null || { echo "chaos: $need is missing (scripts/peers.sh installs it)" >&2; exit 1; }
done
python3 -c 'import boto3, requests' || { echo "chaos: python3 needs boto3 and requests" >&2; exit 1; }

if [ -z "${CERTFLOW_BIN:-}" ]; then
    cargo build -q -p certflow-server --bin certflow
    [ "$MODE" = agent ] && cargo build -q -p certflow-agent
    CERTFLOW_BIN=$PWD/target/debug/certflow
fi
WORK=$(mktemp -d /tmp/chaos.XXXXXX)
chmod 755 "$WORK"
export CHAOS_WORK=$WORK CHAOS_BIN=$CERTFLOW_BIN CHAOS_PGBIN=$PGBIN CHAOS_SECONDS=$SECONDS_CHAOS \
    CHAOS_CERTS=$CERTS CHAOS_VALIDITY=$VALIDITY CHAOS_MODE=$MODE CHAOS_QUIET=$QUIET CHAOS_FREEZE=$FREEZE CHAOS_PG_DOWN=$PG_DOWN
echo "chaos: work directory $WORK" >&2
status=0
python3 - <<'PY' || status=$?
import atexit, base64, json, os, random, signal, socket, subprocess, sys, threading, time, uuid

import boto3, requests

W = os.environ["CHAOS_WORK"]
BIN = os.environ["CHAOS_BIN"]
PGBIN = os.environ["CHAOS_PGBIN"]
CHAOS = int(os.environ["CHAOS_SECONDS"])
CERTS = int(os.environ["CHAOS_CERTS"])
VALIDITY = int(os.environ["CHAOS_VALIDITY"])
QUIET = int(os.environ["CHAOS_QUIET"])
FREEZE = int(os.environ["CHAOS_FREEZE"])
PG_DOWN = int(os.environ["CHAOS_PG_DOWN"])
REPLICAS = 3
# A renewal due this long before the replicas stopped must have happened:
# the delivery lease (15 s) for a killed worker's job, the scheduler's tick,
# the backoff cap and the renewal itself, with room for two busy cores.
GRACE = 45
AWS = {"AWS_ACCESS_KEY_ID": "chaos", "AWS_SECRET_ACCESS_KEY": "chaos",
       "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1", "AWS_EC2_METADATA_DISABLED": "true"}
os.environ.update(AWS)
# What the certflow processes see: nothing of this shell's CERTFLOW_* (the
# server refuses unknown keys), the AWS settings for moto.
BASE_ENV = dict(AWS, PATH=os.environ.get("PATH", ""), HOME=os.environ.get("HOME", "/root"))
random.seed(os.environ.get("CHAOS_SEED"))


def log(msg):
    print(f"chaos: [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, check, timeout, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"chaos: {what} exited with {proc.returncode} before it was ready")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"chaos: {what} did not come up within {timeout} s")


children = []  # every process started here, stopped at the end by its own id
pg_started = False


def cleanup():
    for p in children:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    if pg_started:
        subprocess.run(["su", "postgres", "-c", f"{PGBIN}/pg_ctl -D {PGDIR}/data -m fast -w stop"],
                       capture_output=True)


atexit.register(cleanup)


def interrupted(signum, _frame):
    raise SystemExit(f"chaos: interrupted by signal {signum}")


# Background jobs start with SIGINT ignored: take both, so the peers are stopped.
signal.signal(signal.SIGINT, interrupted)
signal.signal(signal.SIGTERM, interrupted)


def agent_chaos():
    """kill -9 of the real certflow-agent at random moments while it installs
    one-minute certificates renewed every few seconds into nginx: after every
    kill nginx answers a verified handshake (so it serves a certificate with
    its key), the files on disk are a matching pair nginx accepts (`nginx -t`),
    and at the end nginx serves the current version."""
    import ssl
    global TOKEN
    nginx_bin, host = "/usr/sbin/nginx", "www.chaos.test"
    if not os.path.exists(nginx_bin):
        raise SystemExit("chaos: nginx is missing (apt-get install nginx)")
    agent_bin = os.path.join(os.path.dirname(BIN), "certflow-agent")
    api_port, agent_port, nginx_port = free_port(), free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    env = dict(BASE_ENV, CERTFLOW_DATA_DIR=f"{W}/server", CERTFLOW_SERVER__LISTEN=f"127.0.0.1:{api_port}",
               CERTFLOW_AGENT__LISTEN=f"127.0.0.1:{agent_port}", CERTFLOW_METRICS__LISTEN="off",
               CERTFLOW_NOTIFICATIONS__ENABLED="false", CERTFLOW_RENEWAL__SCHEDULER_INTERVAL_SECS="1",
               CERTFLOW_RENEWAL__BACKOFF_BASE_SECS="1", CERTFLOW_RENEWAL__BACKOFF_CAP_SECS="4",
               # 60 s certificates due about 2 s after issuance: a new version every few seconds.
               CERTFLOW_RENEWAL__POLICY__DEFAULT__RENEW_AT_FRACTION="0.03",
               CERTFLOW_RENEWAL__POLICY__DEFAULT__JITTER_FRACTION="0.0", RUST_LOG="info")
    server = subprocess.Popen([BIN, "serve"], env=env, stdout=open(f"{W}/server.log", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    children.append(server)
    wait_until("certflow", lambda: requests.get(f"{api}/readyz", timeout=2).ok, 120, server)
    TOKEN = next(l.strip().split("=", 1)[1] for l in open(f"{W}/server.log")
                 if l.startswith("export CERTFLOW_TOKEN="))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    issuer = requests.get(f"{api}/console/api/v1/issuers", headers=headers, timeout=10).json()[0]
    with open(f"{W}/server-ca.pem", "w") as f:
        f.write(issuer["issuing_cert_pem"])
    with open(f"{W}/root.pem", "w") as f:
        f.write(issuer["chain_pem"])
    jt = requests.post(f"{api}/console/api/v1/agents/join-tokens", headers=headers, timeout=10,
                       json={"name": "web-01", "teams": ["web"], "ttl_minutes": 30})
    assert jt.status_code == 201, jt.text
    fd = os.open(f"{W}/join-token", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, jt.json()["token"].encode())
    os.close(fd)

    nd = f"{W}/nginx"
    for sub in ("logs", "tmp", "tls"):
        os.makedirs(f"{nd}/{sub}")
    with open(f"{nd}/nginx.conf", "w") as f:
        f.write(f"""user root;
pid {nd}/nginx.pid;
error_log {nd}/logs/error.log warn;
worker_processes 1;
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_body_temp_path {nd}/tmp/body; proxy_temp_path {nd}/tmp/proxy; fastcgi_temp_path {nd}/tmp/fastcgi;
  uwsgi_temp_path {nd}/tmp/uwsgi; scgi_temp_path {nd}/tmp/scgi;
  server {{
    listen 127.0.0.1:{nginx_port} ssl;
    server_name {host};
    ssl_certificate {nd}/tls/www.pem;
    ssl_certificate_key {nd}/tls/www.key;
    location / {{ return 200 "ok\\n"; }}
  }}
}}
""")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{nd}/tls/www.key", "-out", f"{nd}/tls/www.pem", "-days", "1", "-subj", f"/CN={host}"],
                   check=True, capture_output=True)
    ngx = [nginx_bin, "-p", nd, "-c", "nginx.conf"]
    subprocess.run(ngx, check=True)
    # nginx daemonises: stopped through its pid file at exit.
    atexit.register(lambda: subprocess.run(ngx + ["-s", "stop"], capture_output=True))
    nginx_pid = lambda: int(open(f"{nd}/nginx.pid").read())
    with open(f"{W}/agent.toml", "w") as f:
        f.write(f"""server = "https://127.0.0.1:{agent_port}"
ca_file = "{W}/server-ca.pem"
state_dir = "{W}/state"
agent_name = "web-01"
poll_interval_secs = 5
long_poll_secs = 10
backoff_cap_secs = 2
[auth]
join_token_file = "{W}/join-token"
[[certificate]]
name = "www"
names = ["{host}"]
validity_seconds = 60
[certificate.install]
fullchain = "{nd}/tls/www.pem"
key = "{nd}/tls/www.key"
[certificate.reload]
command = "{' '.join(ngx)} -s reload"
timeout_secs = 20
[certificate.verify]
address = "127.0.0.1:{nginx_port}"
sni = "{host}"
timeout_secs = 10
""")
    os.chmod(f"{W}/agent.toml", 0o600)

    ctx = ssl.create_default_context(cafile=f"{W}/root.pem")

    def served():
        """The SHA-256 of the leaf nginx serves through a handshake verified
        against certflow's root for the name: it proves nginx holds its key."""
        with socket.create_connection(("127.0.0.1", nginx_port), timeout=5) as sock:
            with ctx.wrap_socket(sock, server_hostname=host) as tls:
                import hashlib
                return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()

    def pubkey(args):
        return subprocess.run(["openssl", *args], capture_output=True, text=True).stdout

    def check(when):
        bad = []
        cert_pub = pubkey(["x509", "-noout", "-pubkey", "-in", f"{nd}/tls/www.pem"])
        key_pub = pubkey(["pkey", "-pubout", "-in", f"{nd}/tls/www.key"])
        if not cert_pub or cert_pub != key_pub:
            bad.append(f"{when}: the files on disk are not a matching certificate and key")
        t = subprocess.run(ngx + ["-t"], capture_output=True, text=True)
        if t.returncode != 0:
            bad.append(f"{when}: nginx -t refuses the files on disk: {t.stderr.strip()[-300:]}")
        return bad

    agent_log = open(f"{W}/agent.log", "a")
    agent_env = dict(BASE_ENV, RUST_LOG="info")

    def start_agent():
        p = subprocess.Popen([agent_bin, "run", "--config", f"{W}/agent.toml"], env=agent_env,
                             stdout=subprocess.DEVNULL, stderr=agent_log, start_new_session=True)
        children.append(p)
        return p

    agent = start_agent()
    # The bootstrap certificate is self-signed: handshakes count from the first install on.
    wait_until("the first install", lambda: served() is not None, 90, agent)
    handshakes, failures, violations = [0], [], []
    stop = threading.Event()

    def shaker():
        while not stop.is_set():
            try:
                served()
                handshakes[0] += 1
            except Exception as e:
                failures.append(f"{time.strftime('%H:%M:%S')} {e}")
            time.sleep(0.05)

    th = threading.Thread(target=shaker, daemon=True)
    th.start()
    kills, end = 0, time.time() + CHAOS
    log(f"killing certflow-agent at random moments for {CHAOS} s")
    while time.time() < end:
        time.sleep(random.uniform(0.2, 3.0))
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        kills += 1
        violations += check(f"kill {kills}")
        agent = start_agent()
    log(f"{kills} kills; letting the agent converge")
    import re
    installs = sum(1 for l in open(f"{W}/agent.log") if ": installed " in re.sub(r"\x1b\[[0-9;]*m", "", l))
    deadline = time.time() + 60
    ids = requests.get(f"{api}/console/api/v1/certificates?search={host}", headers=headers, timeout=10).json()
    cid = ids["items"][0]["id"]
    converged = False
    while time.time() < deadline and not converged:
        d = requests.get(f"{api}/console/api/v1/certificates/{cid}", headers=headers, timeout=10).json()
        current = [v for v in d["versions"] if v["status"] == "current"]
        try:
            converged = bool(current) and served() == current[0]["fingerprint_sha256"]
        except Exception:
            pass
        if not converged:
            time.sleep(0.5)
    stop.set()
    th.join()
    agent.send_signal(signal.SIGTERM)
    agent.wait()
    violations += check("end")
    if not converged:
        violations.append("nginx does not serve the current version a minute after the last kill")
    versions = len(d["versions"])
    for f in failures[:20]:
        log(f"handshake failed: {f}")
    for v in violations[:50]:
        log(f"VIOLATION: {v}")
    print(f"chaos: agent: {installs} installs, {versions} versions, {kills} kills, {handshakes[0]} handshakes, "
          f"{len(failures)} failed, {len(violations)} violations")
    sys.exit(1 if violations or failures else 0)


if os.environ.get("CHAOS_MODE") == "agent":
    agent_chaos()


# --- PostgreSQL: a throwaway cluster, restartable without disturbing others.
PGDIR, PGPORT = f"{W}/pg", free_port()
os.makedirs(PGDIR)
subprocess.run(["chown", "postgres:postgres", PGDIR], check=True)


def as_postgres(cmd):
    return subprocess.run(["su", "postgres", "-c", cmd], check=True, capture_output=True, text=True)


as_postgres(f"{PGBIN}/initdb -D {PGDIR}/data -U postgres --auth=trust --no-sync")
PGOPTS = f"-c listen_addresses=127.0.0.1 -p {PGPORT} -k {PGDIR} -c fsync=off -c max_connections=200"
as_postgres(f"{PGBIN}/pg_ctl -D {PGDIR}/data -l {PGDIR}/log -o '{PGOPTS}' -w start")
pg_started = True


def psql(sql, db="certflow"):
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(PGPORT), "-U", "postgres", "-d", db,
                          "-At", "-F", "|", "-c", sql], check=True, capture_output=True, text=True)
    return [line.split("|") for line in out.stdout.splitlines() if line]


psql("CREATE DATABASE certflow", db="postgres")
DB_URL = f"postgres://postgres@127.0.0.1:{PGPORT}/certflow"

# --- moto: S3 for blobs, SQS for the renewal queue.
MOTO_PORT = free_port()
MOTO = f"http://127.0.0.1:{MOTO_PORT}"
moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(MOTO_PORT)],
                        stdout=open(f"{W}/moto.log", "w"), stderr=subprocess.STDOUT)
children.append(moto)
wait_until("moto", lambda: requests.get(f"{MOTO}/moto-api/", timeout=2).ok, 30)
s3 = boto3.client("s3", endpoint_url=MOTO)
s3.create_bucket(Bucket="chaos", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
sqs = boto3.client("sqs", endpoint_url=MOTO)
dlq = sqs.create_queue(QueueName="certflow-renewals-dlq")["QueueUrl"]
dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
queue = sqs.create_queue(QueueName="certflow-renewals", Attributes={
    "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "8"}),
    "MessageRetentionPeriod": "1209600"})["QueueUrl"]

CONFIG = f"{W}/certflow.toml"
with open(CONFIG, "w") as f:
    f.write(f"""
[database]
url = "{DB_URL}"
[blob]
kind = "s3"
bucket = "chaos"
prefix = "chaos"
region = "eu-west-1"
endpoint = "{MOTO}"
path_style = true
allow_http = true
[master_key]
key = "{base64.b64encode(os.urandom(32)).decode()}"
[console]
rate_limit_per_sec = 10000
rate_limit_burst = 10000
[agent]
listen = "off"
[metrics]
listen = "off"
[notifications]
enabled = false
[renewal]
queue = "sqs"
scheduler_interval_secs = 1
backoff_base_secs = 1
backoff_cap_secs = 4
max_attempts = 8
[renewal.sqs]
queue_url = "{queue}"
dead_letter_queue_url = "{dlq}"
region = "eu-west-1"
endpoint_url = "{MOTO}"
max_receive_count = 8
""")
os.chmod(CONFIG, 0o600)


class Replica:
    def __init__(self, n):
        self.n, self.port = n, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc, self.down_until, self.starts = None, None, 0

    def start(self):
        env = dict(BASE_ENV, CERTFLOW_DATA_DIR=f"{W}/r{self.n}",
                   CERTFLOW_SERVER__LISTEN=f"127.0.0.1:{self.port}", RUST_LOG="info")
        out = open(f"{W}/r{self.n}.log", "a")
        self.proc = subprocess.Popen([BIN, "--config", CONFIG, "serve"], env=env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        children.append(self.proc)
        self.down_until, self.starts = None, self.starts + 1

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


replicas = [Replica(n) for n in range(REPLICAS)]
replicas[0].start()
wait_until("replica 0", lambda: requests.get(f"{replicas[0].url}/readyz", timeout=2).ok, 120, replicas[0].proc)
TOKEN = None
for line in open(f"{W}/r0.log"):
    if line.startswith("export CERTFLOW_TOKEN="):
        TOKEN = line.strip().split("=", 1)[1]
if not TOKEN:
    raise SystemExit("chaos: the first replica printed no bootstrap token")
for r in replicas[1:]:
    r.start()
for r in replicas[1:]:
    wait_until(f"replica {r.n}", lambda: requests.get(f"{r.url}/readyz", timeout=2).ok, 120, r.proc)
HEADERS = {"Authorization": f"Bearer {TOKEN}"}

created = {}        # id -> name: every 201 a client got
create_lock = threading.Lock()
client_stats = {"201": 0, "other": 0, "gave_up": 0}


def create(name, attempts=20):
    """POST a certificate with one Idempotency-Key, retried across replicas
    until a definite answer; remembers a 201."""
    key = str(uuid.uuid4())
    body = {"team": "chaos", "names": [name], "validity_seconds": VALIDITY}
    for _ in range(attempts):
        r = random.choice(replicas)
        try:
            resp = requests.post(f"{r.url}/console/api/v1/certificates", json=body, timeout=20,
                                 headers=dict(HEADERS, **{"Idempotency-Key": key}))
        except requests.RequestException:
            time.sleep(0.5)
            continue
        if resp.status_code == 201:
            with create_lock:
                created[resp.json()["id"]] = name
                client_stats["201"] += 1
            return True
        if resp.status_code >= 500 or resp.status_code in (409, 429):
            time.sleep(0.5)
            continue
        with create_lock:
            client_stats["other"] += 1
        log(f"create {name}: {resp.status_code} {resp.text[:300]}")
        return False
    with create_lock:
        client_stats["gave_up"] += 1
    return False


log(f"creating {CERTS} certificates of {VALIDITY} s")
t = time.time()
batch = [threading.Thread(target=lambda k=k: [create(f"c{i}.chaos.example.com") for i in range(k, CERTS, 4)],
                          daemon=True) for k in range(4)]
for th in batch:
    th.start()
for th in batch:
    th.join()
log(f"created {len(created)} in {time.time() - t:.0f} s")

stop_client = threading.Event()


# Paced so the chaos adds about half the initial population: each new
# certificate renews for the rest of the run, and an ever-growing load would
# measure the two cores, not the invariants.
CLIENT_PACE = max(0.5, CHAOS / (0.5 * CERTS))


def client():
    i = 0
    while not stop_client.is_set():
        create(f"live{i}.chaos.example.com")
        i += 1
        stop_client.wait(CLIENT_PACE)


client_thread = threading.Thread(target=client, daemon=True)
client_thread.start()

# --- the chaos
start = time.time()
end = start + CHAOS
pg_restart_at = start + 0.3 * CHAOS
freeze_at = start + max(5, min(0.55 * CHAOS, CHAOS - FREEZE - 10))
freeze_until = None
next_kill = start + random.uniform(2, 5)
kills, unplanned, pg_restarted, frozen, pg_down_until = 0, 0, False, False, None
log(f"chaos for {CHAOS} s")
while time.time() < end:
    now = time.time()
    for r in replicas:
        if r.down_until is not None:
            if now >= r.down_until:
                r.start()
        elif not r.running():
            # Stopped on its own (a start-up check failed during an outage):
            # started again, as an orchestrator would.
            unplanned += 1
            log(f"replica {r.n} exited by itself ({r.proc.returncode}); starting it again")
            r.start()
    if now >= next_kill:
        up = [r for r in replicas if r.running() and r.down_until is None]
        if up:
            r = random.choice(up)
            r.kill()
            kills += 1
            r.down_until = now + random.uniform(0.5, 3)
        next_kill = now + random.uniform(3, 7)
    if not pg_restarted and now >= pg_restart_at:
        # Immediate shutdown (crash recovery on start), down for a while as
        # in a failover: the replicas keep running and must ride it out.
        log(f"stopping PostgreSQL (immediate) for {PG_DOWN} s")
        as_postgres(f"{PGBIN}/pg_ctl -D {PGDIR}/data -m immediate -w stop")
        pg_down_until, pg_restarted = now + PG_DOWN, True
    if pg_down_until is not None and now >= pg_down_until:
        as_postgres(f"{PGBIN}/pg_ctl -D {PGDIR}/data -l {PGDIR}/log -o '{PGOPTS}' -w start")
        pg_down_until = None
        log("PostgreSQL started again")
    if not frozen and now >= freeze_at:
        log(f"freezing moto for {FREEZE} s")
        moto.send_signal(signal.SIGSTOP)
        frozen, freeze_until = True, now + FREEZE
    if freeze_until is not None and now >= freeze_until:
        moto.send_signal(signal.SIGCONT)
        freeze_until = None
        log("moto thawed")
    time.sleep(0.2)
if freeze_until is not None:
    moto.send_signal(signal.SIGCONT)
if pg_down_until is not None:
    as_postgres(f"{PGBIN}/pg_ctl -D {PGDIR}/data -l {PGDIR}/log -o '{PGOPTS}' -w start")
stop_client.set()
client_thread.join()
for r in replicas:
    if not r.running():
        r.start()
log(f"{kills} kills, {unplanned} unplanned exits; quiet for {QUIET} s")
quiet_end = time.time() + QUIET
while time.time() < quiet_end:
    for r in replicas:
        if not r.running():
            unplanned += 1
            log(f"replica {r.n} exited during the quiet period ({r.proc.returncode})")
            r.start()
    time.sleep(1)

# --- stop everything, then check
t_stop = int(time.time())
for r in replicas:
    r.proc.send_signal(signal.SIGTERM)
for r in replicas:
    try:
        r.proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        log(f"replica {r.n} did not stop on SIGTERM within 40 s")
        r.kill()
violations = []

versions = psql("SELECT certificate_id, version, created_at, not_after FROM certificate_versions "
                "ORDER BY certificate_id, version")
by_cert = {}
for cid, v, created_at, not_after in versions:
    by_cert.setdefault(cid, []).append((int(v), int(created_at), int(not_after)))
certs = {cid: (int(cur), int(ra), st) for cid, cur, ra, st in
         psql("SELECT id, current_version, renew_after, status FROM certificates")}
jobs = psql("SELECT certificate_id, version, state, run_at, COALESCE(last_error, '') FROM renewal_jobs")
done = {}
for cid, v, state, run_at, err in jobs:
    if state == "done":
        done.setdefault(cid, set()).add(int(v))

renewals = sum(len(vs) - 1 for vs in by_cert.values())
lost = duplicate = expired_gaps = 0
for cid, (cur, renew_after, status) in certs.items():
    vs = by_cert.get(cid, [])
    numbers = [v for v, _, _ in vs]
    if numbers != list(range(1, len(vs) + 1)) or (numbers and numbers[-1] != cur):
        violations.append(f"certificate {cid}: versions {numbers}, current {cur}")
    for (v0, c0, na0), (v1, c1, _) in zip(vs, vs[1:]):
        # Renewed at about 2/3 of its life (jitter ±10 %): a successor much
        # sooner is a second renewal of one due version.
        if c1 - c0 < 0.45 * (na0 - c0):
            duplicate += 1
            violations.append(f"certificate {cid}: version {v1} {c1 - c0} s after version {v0}")
        if c1 > na0:
            expired_gaps += 1
        if v0 not in done.get(cid, set()):
            violations.append(f"certificate {cid}: version {v1} without a done job for version {v0}")
    for v in done.get(cid, set()):
        if v + 1 not in numbers:
            lost += 1
            violations.append(f"certificate {cid}: job for version {v} done, no version {v + 1}")
    if status == "active" and renew_after < t_stop - GRACE:
        lost += 1
        violations.append(f"certificate {cid}: renewal due {t_stop - renew_after} s before the stop "
                          f"never happened (version {cur})")
for cid, v, state, run_at, err in jobs:
    if state in ("queued", "running") and int(run_at) < t_stop - GRACE:
        violations.append(f"job {cid} v{v} stuck {state} since {t_stop - int(run_at)} s ({err})")
    if state == "dead" and not err:
        violations.append(f"job {cid} v{v} dead-lettered without a reason")
dead = sum(1 for j in jobs if j[2] == "dead")
missing = [cid for cid in created if cid not in certs or 1 not in [v for v, _, _ in by_cert.get(cid, [])]]
for cid in missing:
    violations.append(f"certificate {cid} ({created[cid]}) answered 201 but is not there")


def admin(*args):
    return subprocess.run([BIN, "--config", CONFIG, "admin", *args], capture_output=True, text=True,
                          env=dict(BASE_ENV, CERTFLOW_DATA_DIR=f"{W}/admin"))


store = admin("verify-store")
before = store.stdout.splitlines()[0] if store.stdout else store.stderr.strip()
log(f"verify-store: {before}")
if store.returncode != 0:
    violations += [l for l in store.stdout.splitlines() if l.startswith("problem:")] or [store.stderr.strip()]
orphans_before = sum(1 for l in store.stdout.splitlines() if l.startswith("unreferenced:"))
sweep = admin("sweep-blobs", "--grace-hours", "0")
if sweep.returncode != 0:
    violations.append(f"sweep-blobs failed: {sweep.stderr.strip()}")
store = admin("verify-store")
log(f"after a sweep past the grace: {store.stdout.splitlines()[0] if store.stdout else store.stderr.strip()}")
if store.returncode != 0:
    violations += [l for l in store.stdout.splitlines() if l.startswith("problem:")] or [store.stderr.strip()]
if any(l.startswith("unreferenced:") for l in store.stdout.splitlines()):
    violations.append("orphan blobs left after the sweep")
audit = admin("verify-audit")
log(f"verify-audit: {audit.stdout.strip().splitlines()[-1] if audit.stdout else audit.stderr.strip()}")
if audit.returncode != 0:
    violations.append(f"verify-audit: {audit.stderr.strip()}")

dlq_depth = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])
# A message SQS's redrive policy moved on its own while the ledger still
# says queued or running is a job nobody will run (one sent again since and
# done is not).
states = {f"{cid}/{v}": state for cid, v, state, _, _ in jobs}
while True:
    got = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, VisibilityTimeout=120,
                              WaitTimeSeconds=1).get("Messages", [])
    if not got:
        break
    for m in got:
        try:
            body = json.loads(m["Body"])
            state = states.get(f"{body['certificate_id']}/{body['version']}")
        except (ValueError, KeyError):
            state = "unreadable"
        if state not in ("dead", "done"):
            violations.append(f"dead-letter queue message {m['Body'][:200]}: its job is {state}")
log(f"{len(certs)} certificates ({len(created)} answered 201, {client_stats['gave_up']} creates given up, "
    f"{client_stats['other']} refused), {renewals} renewals, {expired_gaps} renewed only after expiry, "
    f"{dead} jobs dead-lettered, DLQ {dlq_depth['Attributes']['ApproximateNumberOfMessages']} messages, "
    f"{orphans_before} crash-orphan blobs swept, {unplanned} unplanned exits, replica starts "
    f"{[r.starts for r in replicas]}, PostgreSQL restarted {int(pg_restarted)}, moto frozen {int(frozen)}")
for v in violations[:50]:
    log(f"VIOLATION: {v}")
if len(violations) > 50:
    log(f"... and {len(violations) - 50} more violations")

print(f"chaos: {renewals} renewals, {kills} kills, {lost} lost, {duplicate} duplicate")
sys.exit(1 if violations else 0)
PY
if [ "$status" -ne 0 ]; then
    echo "chaos: FAILED (logs in $WORK)" >&2
elif [ "$KEEP" = 0 ]; then
    rm -rf "$WORK"
fi
exit "$status"
