#!/usr/bin/env bash
# Makes a throw-away PKI for a loopback test control plane, once per folder: a CA, the
# apiserver's serving certificate, client certificates for admin (system:masters), the
# controller manager and the scheduler, and the service-account token signing key pair.
# Kubeconfigs are written by up.sh, which knows the apiserver's port.
#   usage: pki.sh DIR
set -euo pipefail
dir=${1:?usage: pki.sh DIR}
mkdir -p "$dir"
cd "$dir"
[ -f sa.pub ] && exit 0 # complete: sa.pub is written last

ssl() { openssl "$@" 2>/dev/null; }
ec_key() { ssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
issue() { # name subject extensions
  ec_key "$1.key"
  ssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
  printf '%s\n' "$3" > "$1.ext"
  ssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile "$1.ext" -out "$1.crt"
  rm -f "$1.csr" "$1.ext"
}

ec_key ca.key
ssl req -x509 -new -key ca.key -subj "/CN=licensing-test-kube-ca" -days 30 -out ca.crt
client_ext=$'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth'
issue apiserver "/CN=kube-apiserver" $'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local'
issue admin "/O=system:masters/CN=admin" "$client_ext"
issue kcm "/CN=system:kube-controller-manager" "$client_ext"
issue scheduler "/CN=system:kube-scheduler" "$client_ext"
rm -f ca.srl
ec_key sa.key.tmp
ssl pkey -in sa.key.tmp -pubout -out sa.pub.tmp
mv sa.key.tmp sa.key
mv sa.pub.tmp sa.pub
