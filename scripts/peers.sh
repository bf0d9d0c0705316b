#!/usr/bin/env bash
# Installs the external tools the tests verify certflow against, when missing:
# openssl (Debian) and pkilint (PyPI). Tests fail loudly if these are absent.
set -euo pipefail

if ! command -v openssl >/dev/null 2>&1; then
  echo "== installing openssl"
  apt-get update -qq && apt-get install -y -qq openssl
fi
if ! command -v lint_pkix_cert >/dev/null 2>&1 || ! command -v lint_cabf_serverauth_cert >/dev/null 2>&1; then
  echo "== installing pkilint"
  python3 -m pip install --quiet --disable-pip-version-check pkilint
fi
echo "peers: $(openssl version), pkilint $(python3 -m pip show pkilint 2>/dev/null | sed -n 's/^Version: //p')"

# PostgreSQL: the metadata-store suite runs every case on it too.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "== installing postgresql"
    apt-get update -qq && apt-get install -y -qq postgresql
  fi
  echo "== starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432

# moto server (S3 + KMS emulator): the blob crate's AWS tests start it themselves.
if ! command -v moto_server >/dev/null 2>&1; then
  echo "== installing moto[server]"
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
fi
echo "peers: moto $(python3 -m pip show moto 2>/dev/null | sed -n 's/^Version: //p')"

# aiosmtpd (SMTP sink): the notify crate's email tests start it themselves.
if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
  echo "== installing aiosmtpd"
  python3 -m pip install --quiet --disable-pip-version-check aiosmtpd
fi
echo "peers: aiosmtpd $(python3 -m pip show aiosmtpd 2>/dev/null | sed -n 's/^Version: //p')"

# pebble (ACME test CA) and pebble-challtestsrv (its DNS/challenge peer, same
# Debian package): the certflow-acme suite starts them itself per test.
if ! command -v pebble >/dev/null 2>&1 || ! command -v pebble-challtestsrv >/dev/null 2>&1; then
  echo "== installing pebble"
  apt-get update -qq && apt-get install -y -qq pebble
fi
echo "peers: pebble $(dpkg-query -W -f='${Version}' pebble 2>/dev/null)"

# promtool (from Debian's prometheus): the login e2e checks /metrics with
# `promtool check metrics`, Prometheus' own parser and linter.
if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing prometheus (promtool)"
  apt-get update -qq && apt-get install -y -qq prometheus >/dev/null
fi
echo "peers: promtool $(dpkg-query -W -f='${Version}' prometheus 2>/dev/null)"

# sqlite3 (Debian's CLI): the login e2e reads the stored session row with
# it, to check that no CSRF or ID token is kept in the clear.
if ! command -v sqlite3 >/dev/null 2>&1; then
  echo "== installing sqlite3"
  apt-get update -qq && apt-get install -y -qq sqlite3 >/dev/null
fi
echo "peers: sqlite3 $(sqlite3 --version | cut -d' ' -f1)"

# oidc-provider (OpenID provider fixture): certflow-auth's token tests and the
# server's e2e tests start testdata/oidc/provider.mjs themselves (so does
# scripts/dev-idp.sh); it needs node and its node_modules.
OIDC_FIXTURE="$(cd "$(dirname "$0")/.." && pwd)/testdata/oidc"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "== installing nodejs"
  apt-get update -qq && apt-get install -y -qq nodejs npm
fi
if [ ! -d "$OIDC_FIXTURE/node_modules/oidc-provider" ]; then
  echo "== installing oidc-provider (npm ci in $OIDC_FIXTURE)"
  (cd "$OIDC_FIXTURE" && npm ci --no-audit --no-fund --silent)
fi
echo "peers: node $(node --version), oidc-provider $(node -p "require('$OIDC_FIXTURE/node_modules/oidc-provider/package.json').version" 2>/dev/null)"

# The web console's browser test (crates/server/tests/e2e/console_ui.rs):
# Debian's chromium driven by npm playwright-core (never a downloaded browser),
# axe-core for accessibility; and htmx from npm for scripts/vendor-assets.sh --check.
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium"
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
CONSOLE_DIR="$(cd "$(dirname "$0")/.." && pwd)/crates/server"
for d in "$CONSOLE_DIR/tests/browser" "$CONSOLE_DIR/web"; do
  if [ ! -d "$d/node_modules" ] || [ "$d/package-lock.json" -nt "$d/node_modules" ]; then
    echo "== npm ci in $d"
    (cd "$d" && npm ci --no-audit --no-fund --silent) && touch "$d/node_modules"
  fi
done
echo "peers: $(chromium --version 2>/dev/null | head -n1), playwright-core $(node -p "require('$CONSOLE_DIR/tests/browser/node_modules/playwright-core/package.json').version" 2>/dev/null)"

# jq and curl: scripts/newcomer.sh runs the README's tour, which uses them.
for tool in jq curl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "== installing $tool"
    apt-get update -qq && apt-get install -y -qq "$tool"
  fi
done
echo "peers: $(jq --version), $(curl --version | head -n1 | cut -d' ' -f1-2)"

# nginx (the agent's end-to-end test, crates/server/tests/e2e/agent_nginx.rs):
# the test writes its own config and runs nginx under a temp prefix on a high
# loopback port (`nginx -p DIR -c CONF`), so only the binary is needed here.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "== installing nginx"
  apt-get update -qq && apt-get install -y -qq nginx >/dev/null
fi
echo "peers: $(/usr/sbin/nginx -v 2>&1)"

# SoftHSM2 and OpenSC's pkcs11-tool (CA keys in a PKCS#11 token: the
# keystore crate's tests/softhsm.rs and the e2e ca_keys.rs make their own
# token directory; pkcs11-tool checks the keys are never extractable).
if [ ! -f /usr/lib/softhsm/libsofthsm2.so ] || ! command -v softhsm2-util >/dev/null 2>&1 || ! command -v pkcs11-tool >/dev/null 2>&1; then
  echo "== installing softhsm2 and opensc"
  apt-get update -qq && apt-get install -y -qq softhsm2 opensc >/dev/null
fi
echo "peers: softhsm2 $(softhsm2-util --version), opensc $(dpkg-query -W -f='${Version}' opensc 2>/dev/null)"

# The ACME server's acceptance test (crates/server/tests/e2e/acme_server.rs):
# certbot and lego from Debian as clients; pebble-challtestsrv (Debian's
# pebble package, installed above) as the DNS that certflow's validators
# resolve through (every A query answers 127.0.0.1; TXT records set through
# its management API); and a venv with python `acme` + josepy (the negative
# protocol table) and certbot >= 4.1 (renewalInfo, RFC 9773; Debian's 2.1 has
# none). The venv lives outside the work tree: CERTFLOW_ACME_VENV, default
# ~/.cache/certflow-peers/acme-venv.
for tool in certbot lego; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "== installing $tool"
    apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null
  fi
done
echo "peers: $(certbot --version 2>&1), lego $(dpkg-query -W -f='${Version}' lego 2>/dev/null)"
ACME_VENV="${CERTFLOW_ACME_VENV:-$HOME/.cache/certflow-peers/acme-venv}"
if ! "$ACME_VENV/bin/python" -c 'import acme, josepy' >/dev/null 2>&1 || ! "$ACME_VENV/bin/certbot" --version >/dev/null 2>&1; then
  echo "== creating $ACME_VENV (acme, josepy, certbot>=4.1)"
  mkdir -p "$(dirname "$ACME_VENV")"
  python3 -m venv "$ACME_VENV"
  "$ACME_VENV/bin/pip" install --quiet --disable-pip-version-check 'certbot>=4.1' acme josepy cryptography
fi
echo "peers: venv $("$ACME_VENV/bin/certbot" --version 2>&1), acme $("$ACME_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("acme"))')"
if ! (exec 3<>/dev/tcp/127.0.0.1/8055) 2>/dev/null; then
  echo "== starting pebble-challtestsrv (DNS 127.0.0.1:8053, management 127.0.0.1:8055)"
  mkdir -p /tmp/certflow-peers
  nohup pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" -dns01 127.0.0.1:8053 \
    -http01 "" -https01 "" -tlsalpn01 "" -management 127.0.0.1:8055 \
    >/tmp/certflow-peers/challtestsrv.log 2>&1 &
  echo $! >/tmp/certflow-peers/challtestsrv.pid
  for _ in $(seq 1 50); do
    (exec 3<>/dev/tcp/127.0.0.1/8055) 2>/dev/null && break
    sleep 0.1
  done
fi
(exec 3<>/dev/tcp/127.0.0.1/8055) 2>/dev/null || { echo "pebble-challtestsrv did not start: /tmp/certflow-peers/challtestsrv.log"; exit 1; }
echo "peers: pebble-challtestsrv on 127.0.0.1:8053 (DNS), 127.0.0.1:8055 (management)"
