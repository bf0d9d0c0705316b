"""A small ACME client for certflow's acceptance tests, on the python `acme`
library (certbot's) and josepy, that can also send what a correct client never
would: every JWS header is set by hand, so a test can reuse a nonce, sign with
`alg: none`, carry both `jwk` and `kid` or point `url` elsewhere.

Expectations come from RFC 8555 (and RFC 8737, RFC 9773), not from certflow.
"""

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time

import josepy as jose
import requests
from acme import challenges, crypto_util
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ERR = "urn:ietf:params:acme:error:"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key() -> jose.JWKEC:
    return jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


def public_jwk(key: jose.JWK) -> dict:
    return key.public_key().to_partial_json()


def sign(key: jose.JWK, alg: str, signing_input: bytes) -> bytes:
    if alg == "none":
        return b""
    if alg == "HS256":
        # Any MAC key: the server must refuse the algorithm, not the MAC.
        return hmac.new(b"not-an-account-key", signing_input, hashlib.sha256).digest()
    return getattr(jose, alg).sign(key.key, signing_input)


def jws(key, protected: dict, payload, alg: str = "ES256") -> dict:
    """A flattened JWS (RFC 7515 §7.2.2); payload None is POST-as-GET."""
    protected = dict(protected, alg=alg)
    prot = b64(json.dumps(protected).encode())
    body = "" if payload is None else b64(json.dumps(payload).encode())
    sig = sign(key, alg, f"{prot}.{body}".encode())
    return {"protected": prot, "payload": body, "signature": b64(sig)}


def eab(account_key: jose.JWK, kid: str, hmac_b64: str, url: str, tamper: bool = False) -> dict:
    """The externalAccountBinding JWS of RFC 8555 §7.3.4 (HS256 over the account JWK)."""
    mac_key = base64.urlsafe_b64decode(hmac_b64 + "=" * (-len(hmac_b64) % 4))
    prot = b64(json.dumps({"alg": "HS256", "kid": kid, "url": url}).encode())
    body = b64(json.dumps(public_jwk(account_key)).encode())
    mac = hmac.new(mac_key, f"{prot}.{body}".encode(), hashlib.sha256).digest()
    if tamper:
        mac = bytes([mac[0] ^ 1]) + mac[1:]
    return {"protected": prot, "payload": body, "signature": b64(mac)}


class Client:
    """One ACME account (or a would-be one) against one directory."""

    def __init__(self, directory_url: str, ca_bundle: str):
        self.http = requests.Session()
        # Not the environment's REQUESTS_CA_BUNDLE (it would win over `verify`), nor proxies.
        self.http.trust_env = False
        self.http.verify = ca_bundle
        r = self.http.get(directory_url, timeout=10)
        r.raise_for_status()
        self.dir = r.json()
        self.key = new_key()
        self.kid = None
        self.last_nonce = None

    def nonce(self) -> str:
        if self.last_nonce:
            n, self.last_nonce = self.last_nonce, None
            return n
        r = self.http.head(self.dir["newNonce"], timeout=10)
        assert r.status_code == 200, f"HEAD newNonce: {r.status_code}"
        return r.headers["Replay-Nonce"]

    def post(self, url, payload, *, key=None, alg="ES256", kid=True, jwk=False,
             nonce=None, signed_url=None, content_type="application/jose+json", extra=None):
        """POST a JWS to `url`; by default signed with the account key and its kid."""
        key = key or self.key
        protected = {"nonce": nonce if nonce is not None else self.nonce(),
                     "url": signed_url or url}
        kid_value = self.kid if kid is True else (kid or None)
        if kid_value:
            protected["kid"] = kid_value
        if jwk or not kid_value:
            protected["jwk"] = public_jwk(key)
        if extra:
            protected.update(extra)
        body = json.dumps(jws(key, protected, payload, alg))
        r = self.http.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)
        if "Replay-Nonce" in r.headers:
            self.last_nonce = r.headers["Replay-Nonce"]
        return r

    def new_account(self, eab_kid=None, eab_hmac=None, tamper=False, **fields):
        payload = {"termsOfServiceAgreed": True, **fields}
        if eab_kid:
            payload["externalAccountBinding"] = eab(self.key, eab_kid, eab_hmac, self.dir["newAccount"], tamper)
        r = self.post(self.dir["newAccount"], payload, kid=False)
        if r.status_code in (200, 201):
            self.kid = r.headers["Location"]
        return r

    def get(self, url):
        """POST-as-GET (RFC 8555 §6.3)."""
        return self.post(url, None)

    def new_order(self, identifiers, **fields):
        ids = [{"type": "ip" if all(c in "0123456789." for c in v) or ":" in v else "dns", "value": v}
               for v in identifiers]
        return self.post(self.dir["newOrder"], {"identifiers": ids, **fields})

    def authzs(self, order: dict):
        return [self.get(u).json() for u in order["authorizations"]]

    def key_authorization(self, token: str) -> str:
        return challenges.HTTP01(token=jose.decode_b64jose(token)).key_authorization(self.key)

    def poll(self, url, until, timeout=30.0):
        deadline = time.time() + timeout
        while True:
            r = self.get(url)
            body = r.json()
            if body.get("status") in until:
                return body
            assert time.time() < deadline, f"{url} still {body.get('status')} after {timeout}s: {body}"
            time.sleep(0.3)

    def finalize(self, order: dict, csr_pem: bytes):
        der = x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)
        return self.post(order["finalize"], {"csr": b64(der)})


def csr(names, key_pem: bytes = None):
    """A CSR for `names` (a fresh P-256 key unless one is given): (key PEM, CSR PEM)."""
    if key_pem is None:
        key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    dns = [n for n in names if not all(c in "0123456789." for c in n)]
    ips = [__import__("ipaddress").ip_address(n) for n in names if n not in dns]
    return key_pem, crypto_util.make_csr(key_pem, dns, ipaddrs=ips)


def account_key_pem(client: Client) -> bytes:
    return client.key.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class Http01Server:
    """Serves /.well-known/acme-challenge/<token> on 127.0.0.1:port (RFC 8555 §8.3)."""

    def __init__(self, port: int):
        self.tokens = {}
        self.hits = []
        tokens, hits = self.tokens, self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append((self.headers.get("Host"), self.path))
                token = self.path.rsplit("/", 1)[-1]
                if self.path.startswith("/.well-known/acme-challenge/") and token in tokens:
                    body = tokens[token].encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def problem(r, status, types):
    """Checks `r` is an RFC 7807 problem of one of `types` (short ACME names) with
    `status` (None: any 4xx, where RFC 8555 names no status)."""
    if isinstance(types, str):
        types = [types]
    try:
        body = r.json()
    except ValueError:
        body = {"raw": r.text[:300]}
    ok = ((r.status_code == status if status else 400 <= r.status_code < 500) and body.get("type") in [ERR + t for t in types]
          and r.headers.get("Content-Type", "").startswith("application/problem+json"))
    assert ok, f"want {status} {types}, got {r.status_code} {r.headers.get('Content-Type')} {body}"
    return body


class Table:
    """Runs named cases, prints PASS/FAIL per line, and exits non-zero if any failed."""

    def __init__(self):
        self.failed = []

    def case(self, name, fn):
        try:
            fn()
            print(f"PASS {name}", flush=True)
        except Exception as e:  # a failing case must not hide the next ones
            self.failed.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)

    def done(self):
        print(f"{len(self.failed)} failed: {self.failed}" if self.failed else "all cases passed", flush=True)
        raise SystemExit(1 if self.failed else 0)
