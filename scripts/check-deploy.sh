#!/usr/bin/env bash
# Static checks of the deployment artefacts (deploy/): the CloudFormation
# template with cfn-lint (schema, intrinsic functions, property values) and
# checkov (security posture: encryption, IAM, logging, network), the
# Dockerfile with checkov, the Prometheus alert rules with promtool (syntax
# and their own unit tests) and the scrape configuration (promtool check
# config). Any error or failed check fails the test command.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cfn-lint >/dev/null 2>&1 || ! command -v checkov >/dev/null 2>&1; then
  echo "== installing cfn-lint and checkov"
  python3 -m pip install --quiet --disable-pip-version-check cfn-lint checkov
fi
if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing prometheus (promtool)"
  apt-get update -qq && apt-get install -y -qq prometheus >/dev/null
fi
echo "deploy checks: cfn-lint $(cfn-lint --version | awk '{print $2}'), checkov $(checkov --version)"

echo "== cfn-lint deploy/aws/certflow.yaml"
cfn-lint deploy/aws/certflow.yaml

echo "== checkov deploy/"
# --skip-download: no Prisma Cloud; the bundled policies only.
checkov --quiet --compact --skip-download \
  -f deploy/aws/certflow.yaml deploy/Dockerfile

echo "== promtool deploy/prometheus"
promtool check rules deploy/prometheus/alerts.yml
# The scrape configuration, with a stand-in for the token file it names.
scrape=$(mktemp -d)
trap 'rm -rf "$scrape"' EXIT
cp deploy/prometheus/prometheus.yml deploy/prometheus/alerts.yml "$scrape"/
echo "stand-in-token-for-promtool" >"$scrape"/certflow-metrics.token
promtool check config "$scrape"/prometheus.yml
(cd deploy/prometheus && promtool test rules alerts.test.yml)
