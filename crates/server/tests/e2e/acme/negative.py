"""The protocol-strictness table of issue 15 against a running certflow ACME
server: each case is what RFC 8555 says a server must answer to a client that
gets something wrong. Prints PASS/FAIL per case; exits 1 if any case failed.

    negative.py --directory URL --ca CA.pem --http01-port N \
        --eab-web KID:HMAC,KID:HMAC,KID:HMAC --eab-other KID:HMAC --eab-revoked KID:HMAC
"""

import argparse
import os

from cryptography import x509

import acmetest as at
from acmetest import problem

p = argparse.ArgumentParser()
p.add_argument("--directory", required=True)
p.add_argument("--ca", required=True)
p.add_argument("--http01-port", type=int, required=True)
p.add_argument("--eab-web", required=True, help="three unused EAB keys of team web")
p.add_argument("--eab-other", required=True)
p.add_argument("--eab-revoked", required=True)
p.add_argument("--domain", default="web.example.com")
p.add_argument("--other-domain", default="other.example.com")
a = p.parse_args()
web_keys = [k.split(":", 1) for k in a.eab_web.split(",")]
other_key = a.eab_other.split(":", 1)
revoked_key = a.eab_revoked.split(":", 1)
D = a.domain

t = at.Table()
st = {}
http01 = at.Http01Server(a.http01_port)


def client():
    return at.Client(a.directory, a.ca)


def directory():
    c = client()
    for k in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange", "renewalInfo"):
        assert k in c.dir, f"directory lacks {k}: {c.dir}"
    assert c.dir.get("meta", {}).get("externalAccountRequired") is True, c.dir
    for method in (c.http.head, c.http.get):
        r = method(c.dir["newNonce"], timeout=10)
        assert r.status_code in (200, 204) and r.headers.get("Replay-Nonce"), f"newNonce: {r.status_code} {r.headers}"
        assert "no-store" in r.headers.get("Cache-Control", ""), f"newNonce must be no-store (RFC 8555 §7.2): {r.headers}"


def no_eab():
    problem(client().new_account(), None, "externalAccountRequired")


def bad_mac():
    kid, mac = web_keys[2]
    problem(client().new_account(kid, mac, tamper=True), None, ["unauthorized", "malformed"])


def revoked_eab():
    problem(client().new_account(*revoked_key), None, "unauthorized")


def register():
    c = client()
    r = c.new_account(*web_keys[0])
    assert r.status_code == 201, f"{r.status_code} {r.text}"
    assert r.json()["status"] == "valid", r.text
    assert "Replay-Nonce" in r.headers and "Link" in r.headers, r.headers
    st["web"] = c
    # The same key again is the same account (RFC 8555 §7.3.1): 200 and its URL.
    again = at.Client(a.directory, a.ca)
    again.key = c.key
    r = again.post(c.dir["newAccount"], {"onlyReturnExisting": True}, kid=False)
    assert r.status_code == 200 and r.headers["Location"] == c.kid, f"{r.status_code} {r.text}"


def reused_nonce():
    c = st["web"]
    n = c.nonce()
    r = c.post(c.kid, None, nonce=n)
    assert r.status_code == 200, f"first use: {r.status_code} {r.text}"
    r = c.post(c.kid, None, nonce=n)
    problem(r, 400, "badNonce")
    fresh = r.headers.get("Replay-Nonce")
    assert fresh and fresh != n, f"badNonce without a fresh Replay-Nonce: {r.headers}"
    c.last_nonce = None
    r = c.post(c.kid, None, nonce=fresh)
    assert r.status_code == 200, f"the fresh nonce: {r.status_code} {r.text}"


def stale_nonce():
    c = st["web"]
    r = c.post(c.kid, None, nonce=at.b64(os.urandom(16)))
    problem(r, 400, "badNonce")
    assert r.headers.get("Replay-Nonce"), r.headers


def url_mismatch():
    c = st["web"]
    problem(c.post(c.kid, None, signed_url=c.dir["newOrder"]), None, "unauthorized")


def jwk_and_kid():
    c = st["web"]
    problem(c.post(c.kid, None, jwk=True), 400, "malformed")


def alg(name):
    def run():
        c = st["web"]
        body = problem(c.post(c.kid, None, alg=name), 400, "badSignatureAlgorithm")
        assert "ES256" in body.get("algorithms", []), f"no algorithms list (RFC 8555 §6.2): {body}"
    return run


def content_type():
    c = st["web"]
    r = c.post(c.kid, None, content_type="application/json")
    assert r.status_code == 415, f"{r.status_code} {r.text}"


def rejected_identifier():
    c = st["web"]
    body = problem(c.new_order([f"x.{a.other_domain}"]), None, "rejectedIdentifier")
    text = str(body)
    assert f"x.{a.other_domain}" in text, f"the problem names no identifier: {body}"


def order_not_ready():
    c = st["web"]
    r = c.new_order([f"n1.{D}"])
    assert r.status_code == 201, f"{r.status_code} {r.text}"
    order = r.json()
    assert order["status"] == "pending", order
    st["order"], st["order_url"] = order, r.headers["Location"]
    _, csr = at.csr([f"n1.{D}"])
    problem(c.finalize(order, csr), 403, "orderNotReady")


def challenge_types():
    c = st["web"]
    r = c.new_order([f"*.wild.{D}"])
    assert r.status_code == 201, f"{r.status_code} {r.text}"
    [authz] = c.authzs(r.json())
    assert authz["identifier"] == {"type": "dns", "value": f"wild.{D}"} and authz.get("wildcard") is True, authz
    assert {ch["type"] for ch in authz["challenges"]} == {"dns-01"}, authz
    r = c.new_order(["127.0.0.1"])
    assert r.status_code == 201, f"{r.status_code} {r.text}"
    st["ip_order"], st["ip_url"] = r.json(), r.headers["Location"]
    [authz] = c.authzs(r.json())
    assert authz["identifier"] == {"type": "ip", "value": "127.0.0.1"}, authz
    types = {ch["type"] for ch in authz["challenges"]}
    assert "dns-01" not in types and "http-01" in types, f"RFC 8738 §7: {authz}"


def ip_issued():
    c = st["web"]
    [authz] = c.authzs(st["ip_order"])
    ch = next(ch for ch in authz["challenges"] if ch["type"] == "http-01")
    http01.tokens[ch["token"]] = c.key_authorization(ch["token"])
    assert c.post(ch["url"], {}).status_code == 200
    order = c.poll(st["ip_url"], {"ready", "invalid"})
    assert order["status"] == "ready", order
    _, csr = at.csr(["127.0.0.1"])
    r = c.finalize(order, csr)
    assert r.status_code == 200, f"{r.status_code} {r.text}"
    order = c.poll(st["ip_url"], {"valid", "invalid"})
    leaf = x509.load_pem_x509_certificates(c.post(order["certificate"], None).content)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"], san


def http01_ready():
    c = st["web"]
    [authz] = c.authzs(st["order"])
    assert {"http-01", "dns-01", "tls-alpn-01"} <= {ch["type"] for ch in authz["challenges"]}, authz
    ch = next(ch for ch in authz["challenges"] if ch["type"] == "http-01")
    http01.tokens[ch["token"]] = c.key_authorization(ch["token"])
    r = c.post(ch["url"], {})
    assert r.status_code == 200 and r.json()["status"] in ("pending", "processing", "valid"), r.text
    c.poll(st["order"]["authorizations"][0], {"valid", "invalid"})
    order = c.poll(st["order_url"], {"ready", "invalid"})
    assert order["status"] == "ready", order
    assert any(path.endswith(ch["token"]) for _, path in http01.hits), "the server never fetched the token"
    st["order"] = order


def csr_names():
    c = st["web"]
    _, csr = at.csr([f"n1.{D}", f"n2.{D}"])
    problem(c.finalize(st["order"], csr), 400, "badCSR")
    _, csr = at.csr([f"n9.{D}"])
    problem(c.finalize(st["order"], csr), 400, "badCSR")


def account_key_csr():
    c = st["web"]
    _, csr = at.csr([f"n1.{D}"], key_pem=at.account_key_pem(c))
    problem(c.finalize(st["order"], csr), 400, "badCSR")


def finalize_ok():
    c = st["web"]
    _, csr = at.csr([f"n1.{D}"])
    r = c.finalize(st["order"], csr)
    assert r.status_code == 200, f"{r.status_code} {r.text}"
    order = c.poll(st["order_url"], {"valid", "invalid"})
    assert order["status"] == "valid" and order.get("certificate"), order
    r = c.post(order["certificate"], None)
    assert r.status_code == 200, f"{r.status_code} {r.text}"
    assert r.headers["Content-Type"].startswith("application/pem-certificate-chain"), r.headers
    certs = x509.load_pem_x509_certificates(r.content)
    assert len(certs) >= 2, "a chain: leaf and issuing CA"
    san = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [f"n1.{D}"], san


def other_team():
    c = client()
    r = c.new_account(*other_key)
    assert r.status_code == 201, f"{r.status_code} {r.text}"
    problem(c.new_order([f"n3.{D}"]), None, "rejectedIdentifier")
    r = c.new_order([f"y.{a.other_domain}"])
    assert r.status_code == 201, f"its own team's name: {r.status_code} {r.text}"


def key_change():
    c = client()
    r = c.new_account(*web_keys[1])
    assert r.status_code == 201, f"{r.status_code} {r.text}"
    old, new = c.key, at.new_key()
    inner = at.jws(new, {"jwk": at.public_jwk(new), "url": c.dir["keyChange"]},
                   {"account": c.kid, "oldKey": at.public_jwk(old)})
    r = c.post(c.dir["keyChange"], inner)
    assert r.status_code == 200, f"keyChange: {r.status_code} {r.text}"
    body = problem(c.post(c.kid, None, key=old), None, ["unauthorized", "malformed", "accountDoesNotExist"])
    assert body
    stranger = client()
    stranger.key = old
    problem(stranger.post(c.dir["newAccount"], {"onlyReturnExisting": True}, kid=False),
            None, "accountDoesNotExist")
    c.key = new
    r = c.get(c.kid)
    assert r.status_code == 200, f"the new key: {r.status_code} {r.text}"
    st["rolled"] = c


def deactivated():
    c = st["rolled"]
    r = c.post(c.kid, {"status": "deactivated"})
    assert r.status_code == 200 and r.json()["status"] == "deactivated", f"{r.status_code} {r.text}"
    problem(c.new_order([f"n4.{D}"]), 401, "unauthorized")
    problem(c.get(c.kid), 401, "unauthorized")


t.case("directory lists every resource and requires EAB", directory)
t.case("newAccount without EAB: externalAccountRequired", no_eab)
t.case("newAccount with a bad EAB MAC: refused", bad_mac)
t.case("newAccount with a revoked EAB key: unauthorized", revoked_eab)
t.case("newAccount with the team's EAB key: 201, same key again is the same account", register)
t.case("reused nonce: badNonce with a fresh Replay-Nonce that then works", reused_nonce)
t.case("stale (unknown) nonce: badNonce with a fresh Replay-Nonce", stale_nonce)
t.case("url other than the request URL: unauthorized", url_mismatch)
t.case("both jwk and kid: malformed", jwk_and_kid)
t.case("alg none: badSignatureAlgorithm listing algorithms", alg("none"))
t.case("alg HS256: badSignatureAlgorithm listing algorithms", alg("HS256"))
t.case("Content-Type application/json: 415", content_type)
t.case("a name outside the team's policy: rejectedIdentifier naming it", rejected_identifier)
t.case("finalize before the order is ready: orderNotReady", order_not_ready)
t.case("wildcard authz offers dns-01 only; ip identifier never dns-01", challenge_types)
t.case("http-01 validated by the server: authz valid, order ready", http01_ready)
t.case("CSR names other than the order's: badCSR", csr_names)
t.case("the account key as certificate key: badCSR", account_key_csr)
t.case("finalize with the right CSR: PEM chain download", finalize_ok)
t.case("ip identifier (RFC 8738): http-01 to the address, certificate with the IP SAN", ip_issued)
t.case("account of another team's EAB key: this team's names rejectedIdentifier", other_team)
t.case("keyChange: the old key is refused, the new one works", key_change)
t.case("deactivated account: unauthorized", deactivated)
http01.close()
t.done()
