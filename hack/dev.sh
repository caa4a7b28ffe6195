#!/usr/bin/env bash
# `make dev`: runs sandbox-operator locally as processes.
#   1. kube-apiserver + etcd (built from Go modules) with the CRDs installed
#      (hack/devenv);
#   2. the manager (bin/manager), with leader election, and one node agent
#      (bin/node-agent, node "local", TCG emulation allowed) against it;
#   3. the samples in config/samples and config/samples/dev applied with
#      kubectl (busybox-local boots from the registry devenv serves on
#      127.0.0.1:5000, an image built from the host's busybox-static).
# Prints the KUBECONFIG to use, then runs until Ctrl-C. DEV_VMS=0 runs the
# agent without its VM runtime (no image pulls). The agent emulates the CPU
# (TCG) by default, which works everywhere; DEV_ACCELERATOR=auto uses KVM
# where /dev/kvm can create a VM (this project's development machines have a
# /dev/kvm that passes that probe yet boots no Linux guest).
#
# DEV_SMOKE=1 checks instead of waiting: it exits 0 once the sample Sandbox
# is placed on node "local", busybox-local is Running in a microVM (unless
# DEV_VMS=0) and `kubectl explain sandbox.spec.runtime` works.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV_DIR=${DEV_DIR:-bin/dev}
KUBECONFIG_FILE="$DEV_DIR/kubeconfig"
KUBECTL=bin/k8s/kubectl
mkdir -p "$DEV_DIR"
rm -f "$KUBECONFIG_FILE"

pids=()
cleanup() {
  for p in "${pids[@]}"; do pkill -P "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # The VMs outlive the agent by design (it re-adopts them when it comes
  # back); a stopped dev environment takes them down too.
  pkill -f -- "$DEV_DIR/state/vms/" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

go build -o bin/devenv ./hack/devenv
ACCESS_PORT=${DEV_ACCESS_PORT:-8443}
bin/devenv --kubeconfig-out "$KUBECONFIG_FILE" --access-port "$ACCESS_PORT" >"$DEV_DIR/devenv.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
  [ -s "$KUBECONFIG_FILE" ] && break
  if ! kill -0 "${pids[0]}" 2>/dev/null; then cat "$DEV_DIR/devenv.log" >&2; exit 1; fi
  sleep 0.5
done
[ -s "$KUBECONFIG_FILE" ] || { echo "control plane did not start; see $DEV_DIR/devenv.log" >&2; exit 1; }
export KUBECONFIG="$PWD/$KUBECONFIG_FILE"

# The access API (kubectl sandbox exec/logs/cp) on 127.0.0.1:$ACCESS_PORT, behind the
# kube-apiserver's aggregation layer.
bin/manager --kubeconfig "$KUBECONFIG" --leader-elect --lease-namespace sandbox-system \
  --access-bind-address "127.0.0.1:$ACCESS_PORT" \
  --metrics-bind-address 127.0.0.1:8080 --health-probe-bind-address 127.0.0.1:8081 >"$DEV_DIR/manager.log" 2>&1 &
pids+=($!)

vm_flags=(--state-dir "$DEV_DIR/state" --kernel bin/guest/vmlinux --sandbox-init bin/sandbox-init --guest-modules bin/guest/modules
  --access-bind-address 127.0.0.1:0)
# DEV_VMS=0: register the node and heartbeat only (no pulls, no VMs).
[ "${DEV_VMS:-1}" = 0 ] && vm_flags=()
# --reserve-cpus 0: on a 2-CPU machine the two samples that run need both vCPUs.
bin/node-agent --kubeconfig "$KUBECONFIG" --node-name local --allow-emulation --accelerator "${DEV_ACCELERATOR:-tcg}" --reserve-cpus 0 \
  "${vm_flags[@]}" \
  --metrics-bind-address 127.0.0.1:8090 --health-probe-bind-address 127.0.0.1:8091 >"$DEV_DIR/node-agent.log" 2>&1 &
pids+=($!)

"$KUBECTL" apply -k config/samples/ >/dev/null
"$KUBECTL" apply -k config/samples/dev/ >/dev/null

cat <<MSG

sandbox-operator is running locally.
  logs: $DEV_DIR/devenv.log (control plane), $DEV_DIR/manager.log, $DEV_DIR/node-agent.log
  metrics:           http://127.0.0.1:8080/metrics

Use it with:
  export KUBECONFIG=$KUBECONFIG
  $KUBECTL get sandboxes,sandboxnodes -A
  $KUBECTL explain sandbox.spec.runtime
  bin/kubectl-sandbox exec -it busybox-local -- /bin/sh
  bin/kubectl-sandbox logs -f busybox-local

The node agent registers this machine as SandboxNode "local", pulls each placed Sandbox's
image and boots it as a QEMU microVM (TCG emulation; DEV_ACCELERATOR=auto uses KVM where it works).
The guest runs the image's entrypoint (phase Running; Stopped with its exit code).
busybox-local boots from the local registry (127.0.0.1:5000/dev/busybox:1); its console is
$DEV_DIR/state/vms/<uid>/console.log. python-demo and busybox-parked use Docker Hub images:
without internet python-demo stays Starting with ImageReady=False.
MSG

if [ "${DEV_SMOKE:-0}" = 1 ]; then
  for _ in $(seq 1 60); do
    out=$("$KUBECTL" get sandbox python-demo -n default -o jsonpath='{.status.phase} {.status.nodeName}' 2>"$DEV_DIR/smoke.err" || true)
    case "$out" in "Starting local"|"Running local") break;; esac
    sleep 0.5
  done
  "$KUBECTL" get sandboxes -A
  case "$out" in "Starting local"|"Running local") ;; *) echo "smoke: python-demo not placed (got '$out')" >&2; cat "$DEV_DIR/manager.log" >&2; exit 1;; esac
  if [ "${DEV_VMS:-1}" != 0 ]; then
    for _ in $(seq 1 120); do
      local_phase=$("$KUBECTL" get sandbox busybox-local -o jsonpath='{.status.phase}' 2>>"$DEV_DIR/smoke.err" || true)
      [ "$local_phase" = Running ] && break
      sleep 0.5
    done
    [ "$local_phase" = Running ] || { echo "smoke: busybox-local phase '$local_phase', want Running" >&2; "$KUBECTL" get sandbox busybox-local -o yaml >&2; tail -20 "$DEV_DIR/node-agent.log" >&2; exit 1; }
    echo "smoke: busybox-local is Running in a microVM"
    # The access API: exec through the kube-apiserver, the manager and the agent.
    who=""
    for _ in $(seq 1 60); do
      who=$(bin/kubectl-sandbox exec busybox-local -- id -un 2>>"$DEV_DIR/smoke.err" || true)
      [ "$who" = app ] && break
      sleep 0.5
    done
    [ "$who" = app ] || { echo "smoke: kubectl sandbox exec busybox-local -- id -un printed '$who', want app" >&2; tail -5 "$DEV_DIR/smoke.err" >&2; tail -20 "$DEV_DIR/manager.log" >&2; exit 1; }
    echo "smoke: kubectl sandbox exec reaches the guest (user $who)"
  fi
  parked=$("$KUBECTL" get sandbox busybox-parked -o jsonpath='{.status.phase}')
  [ "$parked" = "Created" ] || { echo "smoke: busybox-parked phase '$parked', want Created" >&2; exit 1; }
  # Capture first: `| grep -q` would close the pipe early and fail kubectl with SIGPIPE.
  explain=$("$KUBECTL" explain sandbox.spec.runtime)
  grep -q "workdir" <<<"$explain" || { echo "smoke: kubectl explain failed" >&2; exit 1; }
  echo "smoke: make dev works (sample placed on node local, kubectl explain answers)"
  exit 0
fi

echo "Press Ctrl-C to stop."
wait "${pids[@]}"
