"""Two certflow replicas behind one public URL (as behind a load balancer),
with the challenge validation in a third process (the worker role): the
account is made on replica A, the order on B, the finalize on A again, and a
nonce handed out by one replica is accepted once across both (RFC 8555 §6.5).

The script prints RESPONDED once the http-01 challenge is answered and shown
to stay unvalidated while no worker runs; it then waits for --go (a file the
test creates after starting the worker) before expecting the order ready.

    replicas.py --public URL --a URL --b URL --ca CA.pem --http01-port N --eab KID:HMAC --go FILE
"""

import argparse
import os
import time
from urllib.parse import urlsplit

import requests

from cryptography import x509

import acmetest as at
from acmetest import problem

p = argparse.ArgumentParser()
p.add_argument("--public", required=True, help="https://host:port both replicas announce")
p.add_argument("--a", required=True, help="https://host:port of replica A")
p.add_argument("--b", required=True, help="https://host:port of replica B")
p.add_argument("--ca", required=True)
p.add_argument("--http01-port", type=int, required=True)
p.add_argument("--eab", required=True)
p.add_argument("--go", required=True)
p.add_argument("--domain", default="web.example.com")
p.add_argument("--directory-path", default="/acme/certflow/directory")
a = p.parse_args()


class Routed(at.Client):
    """A client whose requests go to one replica while every URL (and Host) is the public one."""

    def __init__(self, replica):  # pylint: disable=super-init-not-called
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.verify = a.ca
        host = urlsplit(a.public).netloc
        send = self.http.request

        def request(method, url, **kw):
            kw.setdefault("headers", {})["Host"] = host
            return send(method, url.replace(a.public, replica, 1), **kw)

        self.http.request = request
        r = self.http.get(a.public + a.directory_path, timeout=10)
        r.raise_for_status()
        self.dir = r.json()
        assert self.dir["newOrder"].startswith(a.public), f"directory URLs follow the public URL: {self.dir}"
        self.key = at.new_key()
        self.kid = None
        self.last_nonce = None


t = at.Table()
ca, cb = Routed(a.a), Routed(a.b)
st = {}
http01 = at.Http01Server(a.http01_port)
D = a.domain


def account_on_a():
    r = ca.new_account(*a.eab.split(":", 1))
    assert r.status_code == 201, f"{r.status_code} {r.text}"
    cb.key, cb.kid = ca.key, ca.kid
    r = cb.get(cb.kid)
    assert r.status_code == 200 and r.json()["status"] == "valid", f"B sees A's account: {r.status_code} {r.text}"


def nonce_once_across_replicas():
    n = ca.nonce()
    ca.last_nonce = None
    r = cb.post(cb.kid, None, nonce=n)
    assert r.status_code == 200, f"A's nonce on B: {r.status_code} {r.text}"
    problem(ca.post(ca.kid, None, nonce=n), 400, "badNonce")
    ca.last_nonce = None


def order_on_b():
    r = cb.new_order([f"r1.{D}"])
    assert r.status_code == 201, f"{r.status_code} {r.text}"
    st["order"], st["url"] = r.json(), r.headers["Location"]
    r = ca.get(st["url"])
    assert r.status_code == 200 and r.json()["identifiers"] == [{"type": "dns", "value": f"r1.{D}"}], r.text


def respond_without_worker():
    [authz] = cb.authzs(st["order"])
    ch = next(ch for ch in authz["challenges"] if ch["type"] == "http-01")
    http01.tokens[ch["token"]] = cb.key_authorization(ch["token"])
    r = ca.post(ch["url"], {})
    assert r.status_code == 200, f"{r.status_code} {r.text}"
    deadline = time.time() + 3
    while time.time() < deadline:
        s = cb.get(st["order"]["authorizations"][0]).json()["status"]
        assert s == "pending", f"validated with no worker process running: {s}"
        time.sleep(0.5)
    assert not http01.hits, f"an api-only process fetched the token: {http01.hits}"


def worker_validates():
    print("RESPONDED", flush=True)
    deadline = time.time() + 60
    while not os.path.exists(a.go):
        assert time.time() < deadline, "the test never started the worker"
        time.sleep(0.1)
    order = cb.poll(st["url"], {"ready", "invalid"}, timeout=40)
    assert order["status"] == "ready", order
    assert http01.hits, "ready without the token being fetched"
    st["order"] = order


def finalize_on_a():
    _, csr = at.csr([f"r1.{D}"])
    r = ca.finalize(st["order"], csr)
    assert r.status_code == 200, f"{r.status_code} {r.text}"
    order = ca.poll(st["url"], {"valid", "invalid"})
    assert order["status"] == "valid", order
    r = cb.post(order["certificate"], None)
    assert r.status_code == 200, f"download on B: {r.status_code} {r.text}"
    leaf = x509.load_pem_x509_certificates(r.content)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [f"r1.{D}"], san


t.case("account on replica A, seen by B", account_on_a)
t.case("a nonce from A is accepted once, on B, then badNonce on A", nonce_once_across_replicas)
t.case("order on replica B, read on A", order_on_b)
t.case("http-01 answered: stays pending while only api processes run", respond_without_worker)
t.case("the worker process validates: order ready", worker_validates)
t.case("finalize on A, download on B", finalize_on_a)
http01.close()
t.done()
