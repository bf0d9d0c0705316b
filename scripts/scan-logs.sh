#!/usr/bin/env bash
# Never a secret in a log: after the test suite, every server log it left
# under target/test-logs/ (the e2e `Server` helper writes there, at level
# info) is searched for the secrets the tests created: PEM private keys,
# JWTs (OIDC access and ID tokens), bootstrap admin tokens (`cfb_` + 32
# random bytes base64url) and agent join tokens (`cfj_` + the same). A hit
# names the file, line and kind, not the secret. No log at all fails too:
# the scan must not pass because there was nothing to scan.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${CARGO_TARGET_DIR:-target}/test-logs"
if [ ! -d "$dir" ] || [ -z "$(find "$dir" -type f -name '*.log' -print -quit)" ]; then
  echo "scan-logs: no test logs under $dir: the e2e tests did not run or wrote their logs elsewhere" >&2
  exit 1
fi

files=$(find "$dir" -type f -name '*.log' | wc -l)
bytes=$(find "$dir" -type f -name '*.log' -exec cat {} + | wc -c)
if [ "$bytes" -eq 0 ]; then
  echo "scan-logs: the $files logs under $dir are all empty" >&2
  exit 1
fi

status=0
while IFS='|' read -r kind pattern; do
  # -o would print the secret: print where, and what kind, only.
  if hits=$(grep -rEn --include='*.log' -e "$pattern" "$dir" | cut -d: -f1,2); then
    status=1
    while read -r where; do
      echo "scan-logs: $kind in $where" >&2
    done <<< "$hits"
  fi
done <<'PATTERNS'
private key|PRIVATE KEY-----
JWT|eyJ[A-Za-z0-9_-]{10,}\.eyJ
bootstrap token|cfb_[A-Za-z0-9_-]{43}
join token|cfj_[A-Za-z0-9_-]{43}
PATTERNS

if [ "$status" -ne 0 ]; then
  echo "scan-logs: secrets reached the logs (see above)" >&2
  exit 1
fi
echo "scan-logs: $files logs ($bytes bytes) under $dir: no private key, JWT, bootstrap or join token"
