# sandbox-operator — the Makefile is the interface: `make help` lists targets.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

BIN ?= $(CURDIR)/bin
export PATH := $(BIN):$(PATH)
# envtest finds kube-apiserver, etcd and kubectl here (built by hack/build-control-plane.sh).
export KUBEBUILDER_ASSETS ?= $(BIN)/k8s

CONTROLLER_GEN ?= $(BIN)/controller-gen
TOOLS_MOD := hack/tools/go.mod
HELM ?= $(BIN)/helm
HELM_MOD := hack/tools/helm/go.mod
CHART := charts/sandbox-operator
GO_TEST_FLAGS ?= -count=1
FUZZ_TIME ?= 20s

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: tools ## Generate CRDs (config/crd/bases) and RBAC (config/rbac) from markers, and copy both into the Helm chart.
	$(CONTROLLER_GEN) rbac:roleName=sandbox-manager crd paths="./api/..." paths="./internal/controller/..." paths="./internal/access/..." \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	$(CONTROLLER_GEN) rbac:roleName=sandbox-node-agent paths="./internal/nodeagent/..." \
		output:rbac:artifacts:config=config/rbac/node-agent
	# The chart installs the same CRDs and renders its Roles' rules from copies of config/rbac (charts/*/templates/rbac).
	rm -rf $(CHART)/crds $(CHART)/files/rbac && mkdir -p $(CHART)/crds $(CHART)/files/rbac
	cp config/crd/bases/*.yaml $(CHART)/crds/
	cp config/rbac/role.yaml $(CHART)/files/rbac/manager-role.yaml
	cp config/rbac/leader_election_role.yaml $(CHART)/files/rbac/leader-election-role.yaml
	cp config/rbac/node-agent/role.yaml $(CHART)/files/rbac/node-agent-role.yaml
	rm -rf $(CHART)/files/admission && mkdir -p $(CHART)/files/admission
	cp config/admission/node_agent_policy.yaml config/admission/node_agent_policy_binding.yaml $(CHART)/files/admission/

.PHONY: generate
generate: tools ## Generate deepcopy and the client-go clientset, listers, informers and apply configurations.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths="./api/..."
	BIN=$(BIN) hack/update-codegen.sh

.PHONY: fmt
fmt: ## Run go fmt.
	go fmt ./...

.PHONY: vet
vet: ## Run go vet.
	go vet ./...

.PHONY: lint
lint: $(BIN)/golangci-lint ## Run golangci-lint (.golangci.yml).
	$(BIN)/golangci-lint run --build-tags e2e ./...

$(BIN)/golangci-lint: hack/tools/lint/go.mod
	cd hack/tools/lint && go build -o $(BIN)/golangci-lint github.com/golangci/golangci-lint/v2/cmd/golangci-lint
	touch $(BIN)/golangci-lint

.PHONY: verify
verify: ## Regenerate everything and fail if the committed files differ.
	hack/verify-generated.sh

##@ Test

.PHONY: test
test: control-plane guest-kernel tools $(HELM) vet build images ## Run everything CI runs: unit, envtest and fuzz tests against a real kube-apiserver + etcd, a real microVM boot (QEMU), the verify check, a `make dev` smoke run and the e2e suite.
	SANDBOX_REQUIRE_VM=1 go test $(GO_TEST_FLAGS) ./...
	go test -run '^$$' -fuzz FuzzDerivePhase -fuzztime $(FUZZ_TIME) ./api/v1alpha1/
	go test -run '^$$' -fuzz FuzzReadFrame -fuzztime $(FUZZ_TIME) ./internal/guest/protocol/
	hack/test-verify.sh
	# busybox-local boots (TCG) from the registry devenv serves on loopback; the Docker Hub samples only get placed.
	DEV_SMOKE=1 DEV_DIR=bin/dev-smoke hack/dev.sh
	go test $(GO_TEST_FLAGS) -tags e2e -timeout 20m ./test/e2e/

.PHONY: test-e2e
test-e2e: control-plane guest-kernel $(HELM) build ## Run the end-to-end suite (control plane, manager and two node agents as processes; TCG microVMs).
	go test $(GO_TEST_FLAGS) -tags e2e -timeout 20m ./test/e2e/ -v -ginkgo.v

.PHONY: bench
bench: control-plane guest-kernel build ## Run benchmarks (placement; boot: apply→Running vs a bare QEMU boot, idle RSS; access: exec round trip vs a direct agent call, 64 MiB copies; net: guest TCP throughput and connect latency vs the host's loopback); writes bench/results.json and bench/results.md.
	go run ./bench/cmd/placebench -out bench -build=false
	go run ./bench/cmd/bootbench -out bench -build=false
	go run ./bench/cmd/accessbench -out bench
	go run ./bench/cmd/netbench -out bench

##@ Helm chart

.PHONY: helm-lint
helm-lint: $(HELM) ## Lint the chart (helm lint --strict).
	$(HELM) lint --strict $(CHART)

.PHONY: helm-template
helm-template: $(HELM) ## Render the chart with its defaults (CRDs included) to stdout.
	$(HELM) template sandbox-operator $(CHART) --namespace sandbox-system --include-crds

##@ Build

.PHONY: build
build: ## Build the manager, the node agent, the guest agent (static), the kubectl-sandbox plugin and tools into bin/.
	go build -o $(BIN)/manager ./cmd/manager
	CGO_ENABLED=0 go build -o $(BIN)/sandbox-init ./cmd/sandbox-init
	go build -o $(BIN)/node-agent ./cmd/node-agent
	go build -o $(BIN)/watch-example ./examples/watch
	go build -o $(BIN)/kubectl-sandbox ./cmd/kubectl-sandbox

.PHONY: images
images: build guest-kernel ## Build the manager and node-agent images as OCI image tarballs (bin/images/*.tar) without a Docker engine: a debootstrap rootfs (cached; root), QEMU, the guest kernel and static binaries. IMAGE_REPOSITORY, IMAGE_TAG name them.
	hack/images/build.sh

.PHONY: dev
dev: control-plane guest-kernel build ## Run it locally: kube-apiserver + etcd, CRDs, manager, a SandboxNode and a sample.
	hack/dev.sh

##@ Dependencies

.PHONY: helm
helm: $(HELM) ## Build helm (pinned in hack/tools/helm/go.mod) into bin/.

# helm's version and its default Kubernetes version (Capabilities.KubeVersion,
# the lint deprecation checks) are stamped the way helm's own Makefile does,
# from the pinned module versions.
$(HELM): $(HELM_MOD)
	cd hack/tools/helm && v=$$(go list -m -f '{{.Version}}' helm.sh/helm/v3) && \
		k=$$(go list -m -f '{{.Version}}' k8s.io/client-go) && k=$${k#v0.} && k=$${k%%.*} && \
		go build -trimpath -o $(HELM) -ldflags "-X helm.sh/helm/v3/internal/version.version=$$v \
			-X helm.sh/helm/v3/internal/version.gitTreeState=clean \
			-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$$k \
			-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$$k" \
		helm.sh/helm/v3/cmd/helm
	touch $(HELM)

.PHONY: control-plane
control-plane: ## Build kube-apiserver, etcd and kubectl from Go modules into bin/k8s (cached).
	hack/build-control-plane.sh

.PHONY: guest-kernel
guest-kernel: ## Unpack Debian's cloud kernel (vmlinux + modules) for the microVMs into bin/guest (cached; needs hack/setup.sh's packages).
	hack/setup-guest-kernel.sh

.PHONY: tools
tools: $(CONTROLLER_GEN) ## Build the code generators into bin/.

$(CONTROLLER_GEN): $(TOOLS_MOD)
	cd hack/tools && go build -o $(BIN)/ sigs.k8s.io/controller-tools/cmd/controller-gen \
		k8s.io/code-generator/cmd/applyconfiguration-gen k8s.io/code-generator/cmd/client-gen \
		k8s.io/code-generator/cmd/informer-gen k8s.io/code-generator/cmd/lister-gen
	touch $(CONTROLLER_GEN)
