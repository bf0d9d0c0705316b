#!/usr/bin/env bash
# Dependency hygiene, in seconds (cargo tree reads the lock file; on a machine
# with no registry cache yet it fetches the index first). Fails (exit 1) naming the crate and
# the dependency when:
#  1. a crate under crates/* declares a dependency (normal, dev, build, or
#     target-specific) that its code never names: the dependency's Rust name
#     (the table key, dashes turned to underscores, so a `package = "..."`
#     rename is searched under its new name) must appear as a path (`name::`),
#     in a `use name` or in an `extern crate name` somewhere in its src/, tests/,
#     benches/, examples/ or build.rs. Lines that are plain `//` comments do
#     not count. Genuine exceptions go in ALLOWED below, with their reason;
#  2. certflow-services or certflow-acme reach object_store or an aws-sdk-*
#     crate through normal dependencies (default features): use cases and the
#     ACME issuer must not link a blob store backend or the AWS SDK. Adapters
#     come in through cargo features the server enables (certflow-seal's
#     aws-kms, certflow-acme's route53).
set -euo pipefail
cd "$(dirname "$0")/.."

status=0

echo "== dependencies named in code (crates/*/Cargo.toml)"
python3 - <<'PY' || status=1
import re
import sys
import tomllib
from pathlib import Path

# "crate dependency": why it is declared although no code names it.
ALLOWED = {
    # (none yet) e.g. "certflow-x some-sys": only links a C library, or only
    # turns on a feature of another dependency through feature unification.
}

SECTIONS = ("dependencies", "dev-dependencies", "build-dependencies")


def declared(manifest):
    """(section, key) of every dependency the manifest declares."""
    tables = [(s, manifest.get(s, {})) for s in SECTIONS]
    for target, spec in manifest.get("target", {}).items():
        tables += [(f"target.{target}.{s}", spec.get(s, {})) for s in SECTIONS]
    for section, table in tables:
        for key in table:
            yield section, key


def code_of(crate):
    """The crate's Rust code, without lines that are plain // comments."""
    files = [p for d in ("src", "tests", "benches", "examples") for p in (crate / d).rglob("*.rs")]
    if (crate / "build.rs").is_file():
        files.append(crate / "build.rs")
    lines = []
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.lstrip()
            # Doc comments stay: their examples compile as doctests.
            if stripped.startswith("//") and not stripped.startswith(("///", "//!")):
                continue
            lines.append(line)
    return "\n".join(lines)


failures = []
for cargo_toml in sorted(Path("crates").glob("*/Cargo.toml")):
    crate = cargo_toml.parent
    manifest = tomllib.loads(cargo_toml.read_text(encoding="utf-8"))
    package = manifest.get("package", {}).get("name", crate.name)
    code = code_of(crate)
    for section, key in declared(manifest):
        if f"{package} {key}" in ALLOWED:
            continue
        name = re.escape(key.replace("-", "_"))
        used = re.search(
            rf"(?<![\w:])(?:::)?{name}::|\buse\s+(?:::)?{name}\b|\bextern\s+crate\s+{name}\b", code
        )
        if not used:
            failures.append(
                f"{package}: [{section}] {key} is never named in {crate}/(src|tests|benches|examples|build.rs)"
            )

for failure in failures:
    print(f"unused dependency: {failure}")
if failures:
    print("remove it, or add it to ALLOWED in scripts/check-deps.sh with the reason")
    sys.exit(1)
PY

echo "== no blob store backend or AWS SDK in certflow-services / certflow-acme"
for crate in certflow-services certflow-acme; do
  tree=$(cargo tree -p "$crate" -e normal --prefix none --locked) || {
    echo "cargo tree -p $crate failed" >&2
    exit 1
  }
  forbidden=$(printf '%s\n' "$tree" | awk '$1 == "object_store" || $1 ~ /^aws-sdk-/ { print $1 }' | sort -u)
  for dep in $forbidden; do
    echo "forbidden dependency: $crate depends on $dep (see: cargo tree -p $crate -e normal -i $dep)"
    status=1
  done
done
exit "$status"
