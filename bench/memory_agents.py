#!/usr/bin/env python3
"""Agents for bench/memory.sh: enrol many through the real API, then hold
one kept-alive mTLS connection per agent, polling its assignments.

  enrol  --console URL --token T --agent-url URL --count N --certs C --dir D
         Issues C certificates (server-generated P-256 keys, team "mem") and,
         for each of N agents: a P-256 key and CSR, a join token (console
         API), the enrolment (agent API: the server signs the identity
         certificate and stores the agent), and the assignment of one of the
         C certificates (console API). Keys and certificates go to D/agents.

  hold   --agent-url URL --dir D --count N [--wait S] [--interval S]
         [--hold S] [--report FILE]
         Opens N TLS connections, each with its own agent's identity, then
         on each: the first GET /agent/v1/assignments (200, ETag), then
         GET ...?wait=S with If-None-Match (a long poll, as certflow-agent
         does by default: 55 s), or with --wait 0 a plain poll every
         --interval seconds. Once every connection is up, polls for --hold
         seconds and exits; writes "up" to --report when all are connected
         and a summary (statuses, errors) at the end.

Loopback only; every loop is bounded in time.
"""

import argparse
import asyncio
import collections
import concurrent.futures
import http.client
import json
import os
import random
import resource
import ssl
import sys
import time
import urllib.parse


def post(conn, path, body, token):
    conn.request("POST", path, json.dumps(body), {
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status not in (200, 201):
        raise SystemExit(f"POST {path}: {resp.status} {data[:300]!r}")
    return json.loads(data)


def connection(url, tls):
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=60)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=60)


def make_keys(n):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    out = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mem-agent-{i}")]))
               .sign(key, hashes.SHA256()))
        out.append((key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode(),
                    csr.public_bytes(serialization.Encoding.PEM).decode()))
    return out


def enrol(args):
    os.makedirs(os.path.join(args.dir, "agents"), exist_ok=True)
    t0 = time.time()
    keys = make_keys(args.count)
    print(f"memory_agents: {args.count} keys and CSRs in {time.time() - t0:.1f} s", file=sys.stderr)
    console = connection(args.console, False)
    certs = []
    for c in range(args.certs):
        got = post(console, "/console/api/v1/certificates",
                   {"team": "mem", "name": f"mem-{c}", "names": [f"mem-{c}.example.com"],
                    "key_type": "ecdsa-p256"}, args.token)
        certs.append(got["id"])
    print(f"memory_agents: {args.certs} certificates issued", file=sys.stderr)

    def one(chunk):
        con = connection(args.console, False)
        agent = connection(args.agent_url, True)
        for i in chunk:
            key_pem, csr_pem = keys[i]
            jt = post(con, "/console/api/v1/agents/join-tokens",
                      {"name": f"mem-agent-{i}", "teams": ["mem"]}, args.token)["token"]
            ident = post(agent, "/agent/v1/enroll", {"csr": csr_pem}, jt)
            post(con, f"/console/api/v1/agents/{ident['agent_id']}/assignments",
                 {"certificate_id": certs[i % len(certs)]}, args.token)
            with open(os.path.join(args.dir, "agents", f"{i}.pem"), "w") as f:
                f.write(key_pem + ident["certificate_pem"])
        return len(chunk)

    t0 = time.time()
    workers = 4
    chunks = [range(w, args.count, workers) for w in range(workers)]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        done = sum(pool.map(one, chunks))
    print(f"memory_agents: {done} agents enrolled and assigned in {time.time() - t0:.1f} s",
          file=sys.stderr)


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    if n:
        await reader.readexactly(n)
    return status, headers


async def hold(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    u = urllib.parse.urlsplit(args.agent_url)
    host, port = u.hostname, u.port
    statuses = collections.Counter()
    errors = collections.Counter()
    connected = 0
    all_up = asyncio.Event()
    handshakes = asyncio.Semaphore(64)
    deadline = [None]

    async def agent(i):
        nonlocal connected
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(os.path.join(args.dir, "agents", f"{i}.pem"))
        try:
            async with handshakes:
                # The handshake's own timeout as well: on a loaded machine a
                # handshake the server cut short could otherwise leave its task
                # waiting forever (seen with Python 3.11), and "up" never came.
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=ctx, ssl_handshake_timeout=25), 30)
            etag = None
            first = True
            while True:
                path = "/agent/v1/assignments"
                if etag and args.wait > 0:
                    path += f"?wait={args.wait}"
                req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                if etag:
                    req += f"If-None-Match: {etag}\r\n"
                writer.write((req + "\r\n").encode())
                status, headers = await asyncio.wait_for(read_response(reader), args.wait + 60)
                statuses[status] += 1
                if status == 200:
                    etag = headers.get("etag")
                elif status != 304:
                    raise RuntimeError(f"status {status}")
                if first:
                    first = False
                    connected += 1
                    if connected == args.count:
                        all_up.set()
                if deadline[0] is not None and time.monotonic() >= deadline[0]:
                    break
                if args.wait == 0 or status == 200 and etag is None:
                    await asyncio.sleep(args.interval * (0.5 + random.random()))
            writer.close()
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors[type(e).__name__ + ": " + str(e)[:80]] += 1
            if first:
                connected += 1
                if connected == args.count:
                    all_up.set()

    t0 = time.monotonic()
    tasks = [asyncio.create_task(agent(i)) for i in range(args.count)]
    # A few connections can stall for good on a loaded machine (their tasks
    # wait with no socket; seen with Python 3.11): after 60 s without a new
    # connection, measure with those that are up, and say how many.
    while not all_up.is_set():
        before = connected
        try:
            await asyncio.wait_for(all_up.wait(), 60)
        except asyncio.TimeoutError:
            if 0 < connected == before:
                print(f"memory_agents: stalled at {connected} of {args.count} connections; "
                      "measuring with those", file=sys.stderr)
                break
    up = time.monotonic() - t0
    print(f"memory_agents: {args.count} connections up in {up:.1f} s "
          f"(errors so far: {sum(errors.values())})", file=sys.stderr)
    if args.report:
        with open(args.report, "w") as f:
            f.write("up\n")
    deadline[0] = time.monotonic() + args.hold
    await asyncio.wait(tasks, timeout=args.hold + args.wait + 90)
    summary = {"connections": args.count, "connected": connected, "up_seconds": round(up, 1),
               "statuses": dict(statuses), "errors": dict(errors)}
    print("memory_agents: " + json.dumps(summary), file=sys.stderr)
    if args.report:
        with open(args.report, "a") as f:
            f.write(json.dumps(summary) + "\n")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("enrol")
    e.add_argument("--console", required=True)
    e.add_argument("--token", required=True)
    e.add_argument("--agent-url", required=True)
    e.add_argument("--count", type=int, required=True)
    e.add_argument("--certs", type=int, default=100)
    e.add_argument("--dir", required=True)
    h = sub.add_parser("hold")
    h.add_argument("--agent-url", required=True)
    h.add_argument("--dir", required=True)
    h.add_argument("--count", type=int, required=True)
    h.add_argument("--wait", type=int, default=55)
    h.add_argument("--interval", type=float, default=10)
    h.add_argument("--hold", type=float, default=120)
    h.add_argument("--report")
    args = p.parse_args()
    if args.cmd == "enrol":
        enrol(args)
    else:
        asyncio.run(hold(args))


if __name__ == "__main__":
    main()
