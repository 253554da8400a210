#!/usr/bin/env bash
# Prepares a rotation of rke2's self-signed cluster CAs without breaking
# trust (what k3s's contrib/util/rotate-default-ca-certs.sh does for RKE2
# users), for `rke2 certificate rotate-ca`.
#
# For each of the five CAs (server, client, request-header, etcd/server,
# etcd/peer) it makes a new root, the same root cross-signed by the
# current root, and a new issuing CA signed by the new root. The CA file
# written is the bundle
#     new issuing CA, new root, new root cross-signed by the old root, old root
# and the key file holds the issuing CA's key, then the new root's. Leaves
# issued by the new CA carry the issuing CA and the cross-signed root, so
# anything that trusts only the old root (agents, servers not yet
# restarted, copied kubeconfigs) still verifies them; the old root stays in
# the bundle so leaves of the old CA keep verifying until they are renewed.
# service.key (the service-account signing key) is copied unchanged.
#
# Usage: DATA_DIR=/var/lib/rancher/rke2 scripts/rotate-default-ca-certs.sh
#        rke2 certificate rotate-ca --path=$DATA_DIR/server/rotate-ca
# Needs openssl. Keys are PKCS#8 ECDSA P-256, as rke2 makes them.
set -euo pipefail
umask 077

DATA_DIR="${DATA_DIR:-/var/lib/rancher/rke2}"
TLS="${DATA_DIR}/server/tls"
OUT="${OUT:-${DATA_DIR}/server/rotate-ca}"
DAYS="${DAYS:-3650}"
NOW="$(date +%s)"

command -v openssl >/dev/null || { echo "openssl is required" >&2; exit 1; }
[ -f "${TLS}/server-ca.crt" ] || { echo "${TLS}/server-ca.crt does not exist: is DATA_DIR (${DATA_DIR}) a server's data dir?" >&2; exit 1; }

rm -rf "${OUT}"
mkdir -p "${OUT}/etcd"
WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

cat > "${WORK}/ext.cnf" <<'EOF'
[req]
distinguished_name = dn
[dn]
[v3_ca]
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign, cRLSign
EOF

# The n-th (1-based) PEM block of type $2 in file $1.
nth_block() {
  awk -v n="$3" -v t="$2" '
    $0 == "-----BEGIN " t "-----" { i++ }
    i == n { print }
    $0 == "-----END " t "-----" && i == n { exit }' "$1"
}

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

for TYPE in server client request-header etcd/server etcd/peer; do
  CUR_CRT="${TLS}/${TYPE}-ca.crt"
  CUR_KEY="${TLS}/${TYPE}-ca.key"
  [ -f "${CUR_CRT}" ] && [ -f "${CUR_KEY}" ] || { echo "${CUR_CRT} or its key does not exist; cannot continue" >&2; exit 1; }
  W="${WORK}/$(echo "${TYPE}" | tr / -)"
  # The current root: the file itself, or the root (second certificate and
  # key) of a bundle from an earlier rotation.
  if [ "$(grep -c 'END CERTIFICATE' "${CUR_CRT}")" -gt 1 ]; then
    nth_block "${CUR_CRT}" CERTIFICATE 2 > "${W}-old.pem"
    nth_block "${CUR_KEY}" "PRIVATE KEY" 2 > "${W}-old.key"
  else
    cp "${CUR_CRT}" "${W}-old.pem"
    cp "${CUR_KEY}" "${W}-old.key"
  fi
  NAME="rke2-$(echo "${TYPE}" | tr / -)"
  echo "Generating ${NAME} root (self-signed and cross-signed) and issuing CA"
  newkey "${W}-root.key"
  openssl req -new -key "${W}-root.key" -subj "/CN=${NAME}-root@${NOW}" -config "${WORK}/ext.cnf" -out "${W}-root.csr"
  openssl x509 -req -in "${W}-root.csr" -signkey "${W}-root.key" -days "${DAYS}" -sha256 \
    -extfile "${WORK}/ext.cnf" -extensions v3_ca -set_serial "0x$(openssl rand -hex 16)" -out "${W}-root-ssigned.pem" 2>/dev/null
  openssl x509 -req -in "${W}-root.csr" -CA "${W}-old.pem" -CAkey "${W}-old.key" -days "${DAYS}" -sha256 \
    -extfile "${WORK}/ext.cnf" -extensions v3_ca -set_serial "0x$(openssl rand -hex 16)" -out "${W}-root-xsigned.pem" 2>/dev/null
  newkey "${W}-ca.key"
  openssl req -new -key "${W}-ca.key" -subj "/CN=${NAME}-ca@${NOW}" -config "${WORK}/ext.cnf" -out "${W}-ca.csr"
  openssl x509 -req -in "${W}-ca.csr" -CA "${W}-root-ssigned.pem" -CAkey "${W}-root.key" -days "${DAYS}" -sha256 \
    -extfile "${WORK}/ext.cnf" -extensions v3_ca -set_serial "0x$(openssl rand -hex 16)" -out "${W}-ca.pem" 2>/dev/null
  openssl verify -CAfile "${W}-old.pem" -untrusted "${W}-root-xsigned.pem" "${W}-ca.pem" >/dev/null
  cat "${W}-ca.pem" "${W}-root-ssigned.pem" "${W}-root-xsigned.pem" "${W}-old.pem" > "${OUT}/${TYPE}-ca.crt"
  cat "${W}-ca.key" "${W}-root.key" > "${OUT}/${TYPE}-ca.key"
  chmod 0644 "${OUT}/${TYPE}-ca.crt"
  chmod 0600 "${OUT}/${TYPE}-ca.key"
done
install -m 0600 "${TLS}/service.key" "${OUT}/service.key"

HASH="$(openssl x509 -in "${WORK}/server-root-ssigned.pem" -outform DER | sha256sum | cut -d' ' -f1)"
PASSWORD="$(sed -n 's/^K10[0-9a-f]*::server://p' "${DATA_DIR}/server/token" 2>/dev/null || true)"
echo
echo "Cross-signed CA certificates and keys are in ${OUT}"
if [ -n "${PASSWORD}" ]; then
  echo "Server token after the rotation: K10${HASH}::server:${PASSWORD}"
  echo "(tokens with the current CA hash keep working: the bundle carries the current CA)"
fi
echo
echo "To store them in the cluster, run on a server:"
echo "    rke2 certificate rotate-ca --path=${OUT}"
echo "then restart rke2-server on every server, one at a time."
