# tenant-agent: run `make help` for the targets.

GO      ?= go
BUF     := $(GO) tool buf
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -X github.com/molecule-ai/tenant-agent/pkg/version.Version=$(VERSION)
# grpcnotrace leaves out grpc's x/net/trace, whose html/template makes the
# linker keep every exported method of every type: 4 MB of the agent's
# 17 MB of code, mapped by every running agent.
BUILD_TAGS ?= grpcnotrace
# Compare protos against this git ref in `make breaking`.
BREAKING_AGAINST ?= HEAD~1

.DEFAULT_GOAL := help
.PHONY: help generate lint test interop build check-generated breaking certs run demo demo-ha images bench clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

generate: ## Delete gen/ and regenerate it from proto/ (buf and plugins via go tool)
	rm -rf gen
	$(BUF) generate

lint: ## buf format check, buf lint, gofmt, go vet and go mod tidy
	$(BUF) format --diff --exit-code
	$(BUF) lint
	@unformatted=$$(gofmt -l $$(find . -name '*.go' -not -path './gen/*')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed on:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy; run go mod tidy"; exit 1; }

test: ## Run every test with the race detector (needs Docker for the Docker tests), then the control plane's tests again on PostgreSQL
	$(GO) test -race -count=1 ./...
	TENANT_AGENT_TEST_STORE=postgres $(GO) test -race -count=1 ./controlplane/...

interop: ## Check pkg/sigverify against real cosign (v3), both ways, offline on a loopback registry (nested module interop/cosign, so cosign stays out of go.mod)
	cd interop/cosign && $(GO) test -count=1 ./...

build: ## Build tenant-agent, controlplane and tactl into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(BUILD_TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/tenant-agent ./agent/cmd/tenant-agent
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(BUILD_TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/controlplane ./controlplane/cmd/controlplane
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(BUILD_TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN)/tactl ./tactl/cmd/tactl

check-generated: generate ## Fail if gen/ differs from what proto/ generates
	@changes=$$(git status --porcelain -- gen); \
	if [ -n "$$changes" ]; then echo "gen/ is stale; run make generate and commit:"; echo "$$changes"; exit 1; fi

breaking: ## buf breaking against BREAKING_AGAINST (default HEAD~1), if that commit has protos
	@if git cat-file -e $(BREAKING_AGAINST):buf.yaml 2>/dev/null; then \
		$(BUF) breaking --against '.git#ref=$(BREAKING_AGAINST)'; \
	else echo "breaking: $(BREAKING_AGAINST) has no buf module; nothing to compare"; fi

certs: ## Make the dev PKI in certs/dev (keeps existing files; TENANTS="a b" adds agent certs)
	$(GO) run ./certs/cmd/devpki --out certs/dev $(TENANTS)

TENANT ?= agents-team
GRPCURL_DEV = go tool grpcurl -cacert certs/dev/ca.pem -cert certs/dev/operator-dev.pem -key certs/dev/operator-dev-key.pem

run: build ## Run the control plane (SQLite in var/) and one agent for tenant $(TENANT) on the local Docker (ADOPT=1 to manage existing containers)
	@n=$$(docker ps -aq --filter label=molecule.org-id=$(TENANT) --filter label=molecule.platform.managed=true | wc -l); \
	if [ "$$n" -gt 0 ] && [ "$(ADOPT)" != 1 ]; then \
		echo "$$n existing containers carry tenant $(TENANT)'s labels; the agent would manage (and may refresh) them."; \
		echo "Run with TENANT=<another tenant>, or ADOPT=1 to let it."; exit 2; fi
	@$(GO) run ./certs/cmd/devpki --out certs/dev $(TENANT) > /dev/null
	@echo "The agent manages containers labelled molecule.org-id=$(TENANT) and molecule.platform.managed=true."
	@echo "Try, in another shell:"
	@echo "  TACTL_CERT=certs/dev/operator-dev.pem TACTL_KEY=certs/dev/operator-dev-key.pem TACTL_CA=certs/dev/ca.pem bin/tactl agents   (bin/tactl --help)"
	@echo "  $(GRPCURL_DEV) -d '{}' localhost:7444 controlplane.v1.AdminService/ListAgents"
	@echo "  $(GRPCURL_DEV) -d '{}' localhost:7444 controlplane.v1.AdminService/WatchAgents"
	@echo "  $(GRPCURL_DEV) -d '{\"tenant\":\"$(TENANT)\",\"runtime\":\"codex\",\"image_digest\":\"sha256:...\"}' localhost:7444 controlplane.v1.AdminService/RefreshRuntimeImage"
	@echo "  curl -s localhost:9090/metrics | grep tenantagent_"
	@mkdir -p var; \
	bin/controlplane --store var/controlplane.db --agent-addr 127.0.0.1:7443 --admin-addr 127.0.0.1:7444 --http-addr 127.0.0.1:9090 & cp=$$!; \
	trap 'kill $$cp 2>/dev/null; wait $$cp' EXIT INT TERM; \
	bin/tenant-agent --control-plane localhost:7443 --cert certs/dev/agent-$(TENANT).pem --key certs/dev/agent-$(TENANT)-key.pem \
		--ca certs/dev/ca.pem --state-dir var/agent-$(TENANT)

demo: build ## The whole story on this machine: registry, v1 workspaces, control plane, agent, promote v2 via grpcurl
	$(GO) run ./e2e/demo

demo-ha: build ## Replicas on PostgreSQL: 3 control planes, 4 tenants' agents, promote v2, SIGKILL the rollout's owner mid-way, another finishes it
	$(GO) run ./e2e/demoha

images: build ## Build the Docker images of both binaries (empty base; no registry needed)
	docker build --build-arg VERSION=$(VERSION) -f deploy/controlplane.Dockerfile -t tenant-agent/controlplane:dev .
	docker build --build-arg VERSION=$(VERSION) -f deploy/agent.Dockerfile -t tenant-agent/agent:dev .

BENCH_N ?= 1000 5000
BENCH_ROUNDS ?= 5
# Control plane replicas: BENCH_REPLICAS on one PostgreSQL beside one replica
# (SQLite, then PostgreSQL), BENCH_REPLICAS_N agents; BENCH_REPLICAS=0 skips it.
BENCH_REPLICAS ?= 3
BENCH_REPLICAS_N ?= 1000
# One host: refresh time of 1, 5 and 20 containers one at a time and
# canary-then-parallel, the idle agent's Engine requests, the agent
# process's RSS and CPU (about 9 minutes; the one-at-a-time rows take most).
BENCH_HOST ?= -sizes 1,5,20 -parallel 1,4 -footprint 60s

bench: build ## Fleet fan-out, memory and restart storms at BENCH_N agents, promote acks across BENCH_REPLICAS replicas on PostgreSQL, recreate downtime over BENCH_ROUNDS rounds, one host's refresh and the agent's footprint (needs Docker and PostgreSQL)
	@echo "| N | connect | CP RSS per agent (bare stream) | acked p50 / p99 | all acked | all stored | bare broadcast p50 / p99 / all | all acked / bare | CPU: CP a command / bare a message / bare a command | kill -9 storm | SIGTERM storm |"
	@echo "|---|---|---|---|---|---|---|---|---|---|---|"
	@for n in $(BENCH_N); do $(GO) run ./bench/fleetsim -n $$n || exit 1; done
	@echo
	@if [ "$(BENCH_REPLICAS)" != 0 ]; then \
		$(GO) run ./bench/fleetsim -replicas $(BENCH_REPLICAS) -n $(BENCH_REPLICAS_N) || exit 1; fi
	@echo
	@echo "| rounds | ours (median) | naive (median) | docker restart (median) | ours / restart | naive / restart |"
	@echo "|---|---|---|---|---|---|"
	@$(GO) run ./bench/downtime -rounds $(BENCH_ROUNDS)
	@echo
	@$(GO) run ./bench/hostbench $(BENCH_HOST)

clean: ## Remove bin/
	rm -rf $(BIN)
