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
