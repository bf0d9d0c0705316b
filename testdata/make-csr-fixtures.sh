#!/usr/bin/env bash
# Regenerates the CSR fixtures in testdata/csr/ with the openssl CLI, so the
# parser is tested against requests certflow did not write. Run once and commit
# the output; keys are random, so every run produces different bytes under the
# same file names. The private keys are thrown away.
#
# Accepted: p256.csr p384.csr rsa2048.csr ed25519.csr ca-true.csr
# Rejected: rsa1024.csr rsa-e3.csr secp256k1.csr p521.csr dsa.csr ed448.csr
#           sha1.csr bad-signature.csr garbage.pem truncated.csr
set -euo pipefail

out="$(cd "$(dirname "$0")" && pwd)/csr"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# req NAME KEYFILE [extra openssl req args...]: a CSR for NAME.example.com
# asking for a DNS name, a second DNS name and an IP address.
req() {
  local name=$1 key=$2
  shift 2
  openssl req -new -key "$key" -subj "/CN=$name.example.com" \
    -addext "subjectAltName=DNS:$name.example.com,DNS:www.$name.example.com,IP:192.0.2.10" \
    "$@" -out "$out/$name.csr"
}

genpkey() {
  openssl genpkey -quiet "$@"
}

genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/p256.key"
genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$work/p384.key"
genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa2048.key"
genpkey -algorithm ED25519 -out "$work/ed25519.key"
genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out "$work/rsa1024.key"
genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -pkeyopt rsa_keygen_pubexp:3 -out "$work/rsa-e3.key"
genpkey -algorithm EC -pkeyopt ec_paramgen_curve:secp256k1 -out "$work/secp256k1.key"
genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-521 -out "$work/p521.key"
genpkey -algorithm ED448 -out "$work/ed448.key"
openssl genpkey -genparam -algorithm DSA -pkeyopt dsa_paramgen_bits:2048 -out "$work/dsa.params" 2>/dev/null
genpkey -paramfile "$work/dsa.params" -out "$work/dsa.key"

req p256 "$work/p256.key" -sha256
req p384 "$work/p384.key" -sha384
req rsa2048 "$work/rsa2048.key" -sha256
req ed25519 "$work/ed25519.key"
req rsa1024 "$work/rsa1024.key" -sha256
req rsa-e3 "$work/rsa-e3.key" -sha256
req secp256k1 "$work/secp256k1.key" -sha256
req p521 "$work/p521.key" -sha512
req ed448 "$work/ed448.key"
req dsa "$work/dsa.key" -sha256
req sha1 "$work/rsa2048.key" -sha1

# Asks to become a CA; certflow must ignore every requested extension.
req ca-true "$work/p256.key" -sha256 \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
  -addext "extendedKeyUsage=codeSigning"

# A good RSA CSR with the last signature byte flipped: still well-formed DER,
# but the signature no longer verifies.
openssl req -in "$out/rsa2048.csr" -outform DER -out "$work/good.der"
size=$(wc -c <"$work/good.der")
head -c $((size - 1)) "$work/good.der" >"$work/bad.der"
last=$(tail -c 1 "$work/good.der" | od -An -tu1 | tr -d ' \n')
printf "\\$(printf '%03o' $((last ^ 0x01)))" >>"$work/bad.der"
{
  echo "-----BEGIN CERTIFICATE REQUEST-----"
  openssl base64 -in "$work/bad.der"
  echo "-----END CERTIFICATE REQUEST-----"
} >"$out/bad-signature.csr"

# Well-formed PEM whose payload is not DER at all.
{
  echo "-----BEGIN CERTIFICATE REQUEST-----"
  printf 'this is not a certificate signing request' | openssl base64
  echo "-----END CERTIFICATE REQUEST-----"
} >"$out/garbage.pem"

# A copy-paste accident: the first half of a PEM CSR, no END line.
lines=$(wc -l <"$out/p256.csr")
head -n $((lines / 2)) "$out/p256.csr" >"$out/truncated.csr"

echo "fixtures written to $out"
