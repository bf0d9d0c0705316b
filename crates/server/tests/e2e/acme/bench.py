"""Orders per second through certflow's ACME server, end to end on one machine
(BENCHMARKS.md, "ACME server"): one account, one authorization validated over
http-01 up front (later orders reuse it), then per order newOrder, finalize
with a CSR made before the clock starts, poll until valid, download the chain.

    bench.py --directory URL --ca CA.pem --http01-port N --eab KID:HMAC \
        [--orders 200] [--concurrency 1,8]

Prints one line per concurrency: orders, seconds, orders/s, p50 and p95 latency.
"""

import argparse
import statistics
import threading
import time

import acmetest as at

p = argparse.ArgumentParser()
p.add_argument("--directory", required=True)
p.add_argument("--ca", required=True)
p.add_argument("--http01-port", type=int, required=True)
p.add_argument("--eab", required=True)
p.add_argument("--orders", type=int, default=200)
p.add_argument("--concurrency", default="1,8")
p.add_argument("--name", default="bench.web.example.com")
a = p.parse_args()

main = at.Client(a.directory, a.ca)
r = main.new_account(*a.eab.split(":", 1))
assert r.status_code == 201, r.text

# One validated authorization; every later order for the name reuses it.
http01 = at.Http01Server(a.http01_port)
r = main.new_order([a.name])
assert r.status_code == 201, r.text
order, url = r.json(), r.headers["Location"]
[authz] = main.authzs(order)
ch = next(c for c in authz["challenges"] if c["type"] == "http-01")
http01.tokens[ch["token"]] = main.key_authorization(ch["token"])
assert main.post(ch["url"], {}).status_code == 200
assert main.poll(url, {"ready", "invalid"})["status"] == "ready"
http01.close()


def one_order(c, csr):
    t0 = time.perf_counter()
    r = c.new_order([a.name])
    assert r.status_code == 201, r.text
    order, url = r.json(), r.headers["Location"]
    assert order["status"] == "ready", f"authorization not reused: {order}"
    r = c.finalize(order, csr)
    assert r.status_code == 200, r.text
    order = r.json()
    if order["status"] != "valid":
        order = c.poll(url, {"valid", "invalid"}, timeout=60)
    assert order["status"] == "valid", order
    r = c.post(order["certificate"], None)
    assert r.status_code == 200 and b"BEGIN CERTIFICATE" in r.content, r.text
    return time.perf_counter() - t0


for conc in [int(x) for x in a.concurrency.split(",")]:
    csrs = [at.csr([a.name])[1] for _ in range(a.orders)]
    latencies = []
    lock = threading.Lock()

    def worker(idx):
        c = at.Client(a.directory, a.ca)
        c.key, c.kid = main.key, main.kid
        for i in range(idx, a.orders, conc):
            dt = one_order(c, csrs[i])
            with lock:
                latencies.append(dt)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    assert len(latencies) == a.orders, f"{len(latencies)} of {a.orders} orders completed"
    q = statistics.quantiles(latencies, n=20)
    print(f"concurrency {conc}: {a.orders} orders in {wall:.1f} s = {a.orders / wall:.1f} orders/s; "
          f"latency p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {q[18] * 1000:.0f} ms", flush=True)
