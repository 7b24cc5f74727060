#!/usr/bin/env bash
# Starts the test Kubernetes control plane on loopback: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok (fake nodes and pod states; no kubelet) and
# the cert-manager controller, then installs cert-manager's CRDs, the cert-manager namespace
# and one kwok Node, and prints the admin kubeconfig's path.
# Every port is chosen free at the first start and recorded in RUN_DIR/ports.env, so several
# control planes (and a developer's own on 6443) can run side by side. Idempotent: a second
# run starts only what is not running (this is how one component is restarted).
#   usage: up.sh RUN_DIR        env: LICENSING_KUBE_CACHE (see build.sh)
# Warm start (binaries built): about 10 s to a Ready node on 2 cores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
run=${1:?usage: up.sh RUN_DIR}
mkdir -p "$run"
run=$(cd "$run" && pwd)
bin=$("$here/build.sh")
pki=$run/pki
node=kwok-node-0
mkdir -p "$run/log" "$run/pid"
started=$(date +%s.%N)
log() { echo "kube-up: $*" >&2; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}s')" "$started" "$(date +%s.%N)"; }
# Alive and not a zombie (an exited child a non-reaping parent has not waited for yet).
running() { [ -f "$run/pid/$1" ] && [ -r "/proc/$(cat "$run/pid/$1")/stat" ] && [ "$(sed 's/.*) //' "/proc/$(cat "$run/pid/$1")/stat" | cut -c1)" != Z ]; }

# Ports: free now, chosen together so they differ, kept for the folder's life.
names=(ETCD_CLIENT_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT CERT_MANAGER_METRICS_PORT)
if [ ! -f "$run/ports.env" ]; then
  python3 - "${names[@]}" > "$run/ports.env.tmp" <<'PY'
import random, socket, sys
held = []
for name in sys.argv[1:]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
    print(f"{name}={s.getsockname()[1]}")
# Pod IPs come from a /16 in loopback, a different one per folder (127.64-127.191), so pods
# of two control planes on one machine do not collide; every 127/8 address is on lo.
print(f"POD_CIDR=127.{random.randint(64, 191)}.0.0/16")
PY
  mv "$run/ports.env.tmp" "$run/ports.env"
fi
# shellcheck source=/dev/null
. "$run/ports.env"
api=https://127.0.0.1:$APISERVER_PORT

"$here/pki.sh" "$pki"
kubeconfig() { # user
  cat > "$pki/$1.kubeconfig.tmp" <<EOT
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "$api", certificate-authority: "$pki/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$pki/$1.crt", client-key: "$pki/$1.key"}
contexts:
- name: test
  context: {cluster: test, user: $1}
current-context: test
EOT
  mv "$pki/$1.kubeconfig.tmp" "$pki/$1.kubeconfig"
}
for user in admin kcm scheduler; do kubeconfig "$user"; done

start() { # name command...
  local name=$1
  shift
  if running "$name"; then return 0; fi
  nohup "$@" >> "$run/log/$name.log" 2>&1 &
  echo $! > "$run/pid/$name"
  log "started $name (pid $!)"
}
wait_for() { # what seconds command...
  local what=$1 seconds=$2 i
  shift 2
  for ((i = 0; i < seconds * 10; i++)); do
    if "$@" > /dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "$what not ready after ${seconds}s; last lines of the logs in $run/log:"
  tail -n 5 "$run"/log/*.log >&2 || true
  exit 1
}
kubectl() { "$bin/kubectl" --kubeconfig="$pki/admin.kubeconfig" "$@"; }

start etcd "$bin/etcd" --name=test --data-dir="$run/etcd-data" \
  --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="test=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync --quota-backend-bytes=2147483648 --log-level=warn
# Who deleted or evicted what, for a test that meets a pod gone from under it.
cat > "$run/audit-policy.yaml" <<'EOT'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [delete, deletecollection]
  - level: None
EOT
start apiserver "$bin/kube-apiserver" \
  --audit-policy-file="$run/audit-policy.yaml" --audit-log-path="$run/log/audit.log" \
  --audit-log-maxsize=50 --audit-log-maxbackup=1 \
  --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --client-ca-file="$pki/ca.crt" \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --api-audiences=https://kubernetes.default.svc.cluster.local \
  --authorization-mode=Node,RBAC \
  --service-cluster-ip-range=10.0.0.0/24 --endpoint-reconciler-type=none \
  --allow-privileged=true --profiling=false --v=1
wait_for "kube-apiserver" 120 curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$api/readyz"
log "apiserver ready after $(elapsed)"

start kcm "$bin/kube-controller-manager" \
  --kubeconfig="$pki/kcm.kubeconfig" --authentication-kubeconfig="$pki/kcm.kubeconfig" --authorization-kubeconfig="$pki/kcm.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --leader-elect=false \
  --use-service-account-credentials=true \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --service-cluster-ip-range=10.0.0.0/24 --profiling=false --v=1
start scheduler "$bin/kube-scheduler" \
  --kubeconfig="$pki/scheduler.kubeconfig" --authentication-kubeconfig="$pki/scheduler.kubeconfig" --authorization-kubeconfig="$pki/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --leader-elect=false --profiling=false --v=1
# kwok serves nothing without --server-address; pod IPs from POD_CIDR are loopback addresses.
start kwok "$bin/kwok" --kubeconfig="$pki/admin.kubeconfig" \
  --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --config="$bin/kwok-stages.yaml" \
  --node-lease-duration-seconds=40 --cidr="$POD_CIDR" --node-ip=127.0.0.1
start cert-manager "$bin/cert-manager-controller" --kubeconfig="$pki/admin.kubeconfig" \
  --leader-elect=false --cluster-resource-namespace=cert-manager \
  --metrics-listen-address="127.0.0.1:$CERT_MANAGER_METRICS_PORT" --v=2

kubectl apply --server-side --force-conflicts -f "$bin/cert-manager-crds/" > /dev/null
kubectl wait --for=condition=Established -f "$bin/cert-manager-crds/" --timeout=60s > /dev/null
kubectl create namespace cert-manager --dry-run=client -o yaml | kubectl apply --server-side -f - > /dev/null
# One fake node, untainted so any pod schedules on it; kwok manages it by its annotation and
# gives it its defaults (allocatable cpu 1k, memory 1Ti, pods 1k: plenty).
kubectl apply --server-side -f - > /dev/null <<EOT
apiVersion: v1
kind: Node
metadata:
  name: $node
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {type: kwok, kubernetes.io/hostname: $node, kubernetes.io/os: linux}
EOT
kubectl wait --for=condition=Ready "node/$node" --timeout=60s > /dev/null
log "control plane up, node $node Ready, after $(elapsed)"
echo "$pki/admin.kubeconfig"
