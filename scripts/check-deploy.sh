#!/usr/bin/env bash
# Static checks of the deployment artefacts (deploy/): the CloudFormation
# template with cfn-lint (schema, intrinsic functions, property values) and
# checkov (security posture: encryption, IAM, logging, network), the
# Dockerfile with checkov. Any error or failed check fails the test command.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cfn-lint >/dev/null 2>&1 || ! command -v checkov >/dev/null 2>&1; then
  echo "== installing cfn-lint and checkov"
  python3 -m pip install --quiet --disable-pip-version-check cfn-lint checkov
fi
echo "deploy checks: cfn-lint $(cfn-lint --version | awk '{print $2}'), checkov $(checkov --version)"

echo "== cfn-lint deploy/aws/certflow.yaml"
cfn-lint deploy/aws/certflow.yaml

echo "== checkov deploy/"
# --skip-download: no Prisma Cloud; the bundled policies only.
checkov --quiet --compact --skip-download \
  -f deploy/aws/certflow.yaml deploy/Dockerfile
