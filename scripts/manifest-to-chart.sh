#!/usr/bin/env bash
# Turns a bundled plain manifest into a bundled chart, the way RKE2 ships
# its addons:
#
#   bash scripts/manifest-to-chart.sh NAME
#
# moves crates/controllers/src/addons/NAME.yaml to
# crates/controllers/charts/NAME/templates/NAME.yaml (git mv), turns its
# placeholders into chart values ({cluster_dns} -> .Values.global.clusterDNS,
# {cluster_domain} -> .Values.global.clusterDomain, {addon_image} ->
# .Values.global.addonImage, which rke2 fills through the HelmChart's `set`),
# writes Chart.yaml and values.yaml, and renders the chart with helm to check
# it. Then make the addon's entry in `BUNDLED` (crates/controllers/src/addons.rs)
# `Shipped::Chart { bootstrap: false }` (true only for what must run before
# the pod network, as RKE2's bootstrap charts) and rebuild: build.rs embeds
# every directory under charts/.
set -euo pipefail
die() { printf 'manifest-to-chart: %s\n' "$*" >&2; exit 1; }

(($# == 1)) || die "usage: $0 NAME (e.g. rke2-ingress-nginx)"
name=$1
[[ $name =~ ^[a-z0-9-]+$ ]] || die "not a chart name: $name"
root=$(git rev-parse --show-toplevel)
src=$root/crates/controllers/src/addons/$name.yaml
dst=$root/crates/controllers/charts/$name
[[ -f $src ]] || die "no manifest $src"
[[ ! -e $dst ]] || die "$dst exists already"
# helm would read these as template actions.
if grep -q '{{' "$src"; then
    die "$src contains '{{': write it as {{ \"{{\" }} in the template first"
fi

mkdir -p "$dst/templates"
git -C "$root" mv "$src" "$dst/templates/$name.yaml"
sed -i \
    -e 's/{cluster_dns}/{{ .Values.global.clusterDNS }}/g' \
    -e 's/{cluster_domain}/{{ .Values.global.clusterDomain }}/g' \
    -e 's/{addon_image}/{{ .Values.global.addonImage }}/g' \
    "$dst/templates/$name.yaml"
cat >"$dst/Chart.yaml" <<YAML
apiVersion: v2
name: $name
description: RKE2's $name addon, bundled in rke2 and installed by its HelmChart.
type: application
version: 1.0.0
YAML
cat >"$dst/values.yaml" <<'YAML'
# rke2 sets `global.*` from its config through the HelmChart's `set`; tune
# the chart with a HelmChartConfig of the same name in kube-system.
global:
  clusterDNS: 10.43.0.10
  clusterDomain: cluster.local
  addonImage: rke2.local/rke2-addons:v0.0.0
YAML
git -C "$root" add "$dst"

helm=${HELM:-/usr/local/lib/rke2-test/helm}
if [[ -x $helm ]]; then
    HOME=$(mktemp -d) "$helm" template "$name" "$dst" --namespace kube-system >/dev/null ||
        die "helm template $dst failed"
    echo "manifest-to-chart: $dst renders"
else
    echo "manifest-to-chart: no helm at $helm; not rendered" >&2
fi
echo "manifest-to-chart: now make \"$name\" Shipped::Chart { bootstrap: false } in crates/controllers/src/addons.rs"
