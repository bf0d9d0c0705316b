#!/bin/sh
# lego's `exec` DNS provider hook, called as `hook present|cleanup FQDN VALUE`:
# sets (or clears) the TXT record in pebble-challtestsrv through its
# management API, the DNS certflow's dns-01 validator asks. Each call is
# appended to $HOOK_LOG so the test can see lego used it.
set -eu
mgmt="${CHALLTESTSRV:-http://127.0.0.1:8055}"
echo "$1 $2" >>"${HOOK_LOG:-/dev/null}"
case "$1" in
  present) curl -fsS -d "{\"host\":\"$2\",\"value\":\"$3\"}" "$mgmt/set-txt" ;;
  cleanup) curl -fsS -d "{\"host\":\"$2\"}" "$mgmt/clear-txt" ;;
  *) ;;
esac
