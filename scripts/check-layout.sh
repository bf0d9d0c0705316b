#!/usr/bin/env bash
# The server crate's delivery surfaces are siblings that never import each
# other: http/ (console API), web/ (pages and login), agent_api/ (agent
# listener), pki_api/ (public CA endpoints), ops/ (probes, metrics) and
# acme_api/ (the ACME server). What they share sits in leaf modules at the
# crate root, which import no surface; only router.rs and serve/ know them
# all; config.rs imports nothing of the crate. Test code (tests.rs, *_tests.rs, and what follows `#[cfg(test)]`)
# may drive the whole router. Fails naming the file and the import.
set -euo pipefail
cd "$(dirname "$0")/../crates/server/src"
surfaces=(http web agent_api pki_api ops acme_api)
leaves=(auth config deploy_cache errors extract rate_limit session state telemetry views)

# Non-test, non-comment lines of the .rs files under $@, as file:line:text.
code() {
  find "$@" -name '*.rs' ! -name 'tests.rs' ! -name '*_tests.rs' -print0 2>/dev/null |
    xargs -0 -r awk '
      FNR == 1 { intest = 0 }
      /^[[:space:]]*#\[cfg\(test\)\]/ { intest = 1 }
      !intest && $0 !~ /^[[:space:]]*\/\// { print FILENAME ":" FNR ":" $0 }'
}

bad=0
refuse() { # who, what, lines
  [ -n "$3" ] || return 0
  printf '%s\n' "$3" | sed "s|^|layout: $1 imports $2: |"
  bad=1
}
for s in "${surfaces[@]}"; do
  lines=$(code "$s")
  for other in "${surfaces[@]}" serve router cli; do
    [ "$s" = "$other" ] && continue
    refuse "$s/" "$other" "$(printf '%s\n' "$lines" | grep -E "crate::${other}\b" || true)"
  done
done
for l in "${leaves[@]}"; do
  paths=()
  [ -d "$l" ] && paths+=("$l")
  [ -f "$l.rs" ] && paths+=("$l.rs")
  if [ "${#paths[@]}" = 0 ]; then echo "layout: leaf module $l is missing"; bad=1; continue; fi
  lines=$(code "${paths[@]}")
  for other in "${surfaces[@]}" serve router cli; do
    refuse "leaf $l" "$other" "$(printf '%s\n' "$lines" | grep -E "crate::${other}\b" || true)"
  done
done
refuse "config.rs" "the crate" "$(code config.rs | grep -E 'crate::' || true)"
[ "$bad" = 0 ] && echo "layout: surfaces and leaves OK"
exit "$bad"
