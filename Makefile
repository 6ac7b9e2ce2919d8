# analytics-demo: developer and CI entry points.
#
# The default stack is native: project-local Redis + PostgreSQL managed by .ci/services.sh (data in
# .local/, never the host's own services) and the release binary started in the background.
# Docker targets use docker/docker-compose.yml when a Docker engine answers.
#
# Any variable can be overridden on the command line, e.g.
#   make run EVENTS_PER_SECOND=5 QUERIES_PER_SECOND=10 APP_PORT=3100
#
# Targets are documented with a trailing `## text` comment; `make help` lists them all
# (targets added later, such as bench or migrate-demo, show up automatically).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
APP_NAME      := analytics-demo
LOCAL_DIR     := .local
SERVICES      := bash .ci/services.sh
APP_LOG       := $(LOCAL_DIR)/app.log
APP_PID       := $(LOCAL_DIR)/app.pid
CARGO         ?= cargo
TARGET_DIR    ?= $(or $(CARGO_TARGET_DIR),target)
APP_BIN       ?= $(TARGET_DIR)/release/$(APP_NAME)
NO_BUILD      ?=

APP_PORT      ?= 3000
BIND_ADDRESS  ?= 0.0.0.0:$(APP_PORT)
# Port the local checks (health, metrics, readiness) talk to: the one in BIND_ADDRESS.
HTTP_PORT     = $(lastword $(subst :, ,$(BIND_ADDRESS)))
# Host part of BIND_ADDRESS for the "port already taken" check ("" = all interfaces).
BIND_HOST     = $(subst 0.0.0.0,,$(patsubst %:$(HTTP_PORT),%,$(BIND_ADDRESS)))
APP_URL       = http://127.0.0.1:$(HTTP_PORT)
HEALTH_TIMEOUT ?= 60
STOP_TIMEOUT  ?= 30

# `make run` is the high-load preset (as the brief says: "high load by default").
EVENTS_PER_SECOND  ?= 300
QUERIES_PER_SECOND ?= 700

# Optional application settings: passed to the app only when set (here, in the environment or
# on the command line); otherwise the application's own defaults apply.
APP_ENV_VARS := ORGANIZATIONS USERS_PER_ORG CACHE_HIT_TARGET MAX_WORKERS REDIS_POOL_SIZE \
	CACHE_TTL WARMUP_INTERVAL TIME_BUCKETS SHARDS DURATION SEED LOG_FORMAT ADMIN_TOKEN RUST_LOG \
	DB_TIMEOUT_MS DB_READ_TIMEOUT_MS
ARGS ?=

# Environment handed to the application (shell words); APP_ENV_SHOWN (for the log) hides secrets.
APP_ENV = EVENTS_PER_SECOND='$(EVENTS_PER_SECOND)' QUERIES_PER_SECOND='$(QUERIES_PER_SECOND)' \
	BIND_ADDRESS='$(BIND_ADDRESS)' \
	$(foreach v,$(APP_ENV_VARS),$(if $(value $(v)),$(v)='$($(v))'))
APP_ENV_SHOWN = EVENTS_PER_SECOND=$(EVENTS_PER_SECOND) QUERIES_PER_SECOND=$(QUERIES_PER_SECOND) \
	BIND_ADDRESS=$(BIND_ADDRESS) \
	$(foreach v,$(filter-out ADMIN_TOKEN,$(APP_ENV_VARS)),$(if $(value $(v)),$(v)=$($(v))))

COMPOSE_FILE ?= docker/docker-compose.yml
GRAFANA_URL    ?= http://localhost:3001
PROMETHEUS_URL ?= http://localhost:9090

# Shell snippet: is a Docker engine reachable?
DOCKER_OK = docker info >/dev/null 2>&1
define no_docker
	echo "No Docker engine is running here; the native stack is used instead."; \
	echo "Use: make run / make run-*-load / make logs / make health / make metrics / make stop"
endef
# docker compose (plugin) or docker-compose (standalone)
COMPOSE = $$(if docker compose version >/dev/null 2>&1; then echo docker compose; else echo docker-compose; fi) -f $(COMPOSE_FILE)

.PHONY: help build run run-ultra-load run-high-load run-demo-load run-low-load start-app \
	stop stop-app clean logs logs-all health metrics stats grafana prometheus dev-local dev \
	test fmt lint services-install services-start services-stop services-status

help: ## Show this list of targets
	@echo "analytics-demo make targets:"
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-zA-Z0-9_%-]+:[^#]*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo ""
	@echo "Variables (override on the command line): EVENTS_PER_SECOND=$(EVENTS_PER_SECOND) QUERIES_PER_SECOND=$(QUERIES_PER_SECOND)"
	@echo "  APP_PORT=$(APP_PORT) BIND_ADDRESS=$(BIND_ADDRESS) ARGS='$(ARGS)' and $(APP_ENV_VARS)"

# ---------------------------------------------------------------------------------------------
# Native stack
# ---------------------------------------------------------------------------------------------
run: start-app ## Start Redis + Postgres + app in the background (high load: 300 ev/s, 700 q/s; restarts a running app)

run-ultra-load: EVENTS_PER_SECOND = 2000
run-ultra-load: QUERIES_PER_SECOND = 8000
run-ultra-load: start-app ## Ultra-high load (2000 events/s, 8000 queries/s)

run-high-load: EVENTS_PER_SECOND = 300
run-high-load: QUERIES_PER_SECOND = 700
run-high-load: start-app ## High load (300 events/s, 700 queries/s)

run-demo-load: EVENTS_PER_SECOND = 50
run-demo-load: QUERIES_PER_SECOND = 150
run-demo-load: start-app ## Demo load (50 events/s, 150 queries/s)

run-low-load: EVENTS_PER_SECOND = 10
run-low-load: QUERIES_PER_SECOND = 20
run-low-load: start-app ## Low load (10 events/s, 20 queries/s)

start-app: services-install services-start
	@if [ -z "$(NO_BUILD)" ]; then $(CARGO) build --release; fi
	@test -x "$(APP_BIN)" || { echo "error: $(APP_BIN) not found (build failed?)"; exit 1; }
	@$(MAKE) stop-app QUIET=1
	@APP_BIN='$(APP_BIN)' APP_LOG='$(APP_LOG)' APP_PID='$(APP_PID)' LOCAL_DIR='$(LOCAL_DIR)' \
	HEALTH_TIMEOUT='$(HEALTH_TIMEOUT)' BIND_ADDRESS='$(BIND_ADDRESS)' HTTP_PORT='$(HTTP_PORT)' \
	BIND_HOST='$(BIND_HOST)' APP_URL='$(APP_URL)' EVENTS_PER_SECOND='$(EVENTS_PER_SECOND)' \
	QUERIES_PER_SECOND='$(QUERIES_PER_SECOND)' APP_ENV_SHOWN='$(strip $(APP_ENV_SHOWN))' \
	RUN_GOAL='$(firstword $(MAKECMDGOALS) run)' bash .ci/start-app.sh $(strip $(APP_ENV)) -- $(ARGS)

stop-app: ## Stop only the app (SIGTERM, waits up to STOP_TIMEOUT=30s so it can flush)
	@if [ ! -f $(APP_PID) ]; then [ -n "$(QUIET)" ] || echo "app: not running"; exit 0; fi; \
	pid=$$(cat $(APP_PID)); \
	if ! kill -0 $$pid 2>/dev/null; then rm -f $(APP_PID); [ -n "$(QUIET)" ] || echo "app: not running"; exit 0; fi; \
	echo "stopping analytics-demo (pid $$pid)..."; \
	kill -TERM $$pid; \
	for i in $$(seq 1 $$(( $(STOP_TIMEOUT) * 10 ))); do kill -0 $$pid 2>/dev/null || break; sleep 0.1; done; \
	if kill -0 $$pid 2>/dev/null; then \
		echo "app did not exit within $(STOP_TIMEOUT)s; sending SIGKILL"; kill -KILL $$pid 2>/dev/null || true; \
	else echo "app stopped"; fi; \
	rm -f $(APP_PID)

stop: stop-app ## Stop the app (graceful, flushes), then the local Redis and Postgres
	@$(SERVICES) stop

clean: stop ## Stop everything, remove .local (service data, logs) and cargo build output
	@$(SERVICES) clean
	rm -rf $(LOCAL_DIR)
	$(CARGO) clean

logs: ## Follow the application log (.local/app.log; the app container's log when the compose stack runs)
	@if [ ! -f $(APP_LOG) ] && $(DOCKER_OK) && [ -n "$$($(COMPOSE) ps -q app 2>/dev/null)" ]; then \
		exec $(COMPOSE) logs -f --tail=100 app; fi; \
	test -f $(APP_LOG) || { echo "no $(APP_LOG) yet: start the app with make run"; exit 1; }; \
	tail -n 100 -F $(APP_LOG)

health: ## Check service health (GET /health, pretty-printed)
	@body=$$(mktemp); trap 'rm -f $$body' EXIT; \
	if ! code=$$(curl -sS --max-time 5 -o $$body -w '%{http_code}' $(APP_URL)/health 2>/dev/null); then \
		echo "error: nothing answers on $(APP_URL)/health: the app is not running."; \
		echo "Start it with 'make run' (see 'make logs' if it was started)."; \
		$(SERVICES) status 2>/dev/null | sed 's/^/  /' || true; \
		exit 1; \
	fi; \
	python3 -m json.tool <$$body 2>/dev/null || cat $$body; echo; \
	echo "HTTP $$code"; \
	[ "$$code" = 200 ]

metrics: ## Show a sample of the analytics_ metrics (GET /metrics)
	@out=$$(mktemp); trap 'rm -f $$out' EXIT; \
	if ! curl -fsS --max-time 5 -o $$out $(APP_URL)/metrics 2>/dev/null; then \
		echo "error: nothing answers on $(APP_URL)/metrics: the app is not running (make run)."; exit 1; \
	fi; \
	n=$$(grep -c '^analytics_' $$out || true); \
	if [ "$$n" = 0 ]; then echo "(no analytics_ metrics yet)"; exit 0; fi; \
	awk '/^analytics_/ && n++ < 60' $$out; \
	echo "... $$n analytics_ samples in total; everything: curl -s $(APP_URL)/metrics"

dev-local: ## Run in the foreground (cargo run --release) against REDIS_URL/DATABASE_URL from the environment
	env $(strip $(APP_ENV)) $(CARGO) run --release -- $(ARGS)

dev: services-install services-start ## Start local Redis + Postgres, then run in the foreground (cargo run --release)
	@set -a; . $(LOCAL_DIR)/env; set +a; \
	echo "REDIS_URL=$$REDIS_URL DATABASE_URL=$$DATABASE_URL"; \
	env $(strip $(APP_ENV)) $(CARGO) run --release -- $(ARGS)

services-install: ## Install redis-server / postgresql with apt-get if missing
	@$(SERVICES) install

services-start: ## Start only the project-local Redis + Postgres (.local/)
	@$(SERVICES) start

services-stop: ## Stop only the project-local Redis + Postgres
	@$(SERVICES) stop

services-status: ## Show the state of the project-local Redis + Postgres
	@$(SERVICES) status || true

# ---------------------------------------------------------------------------------------------
# Docker stack (only when a Docker engine answers)
# ---------------------------------------------------------------------------------------------
build: ## Build Docker images (docker/docker-compose.yml)
	@if $(DOCKER_OK); then \
		test -f $(COMPOSE_FILE) || { echo "$(COMPOSE_FILE) does not exist yet"; exit 1; }; \
		$(COMPOSE) build; \
	else $(no_docker); echo "(native build: cargo build --release, done by make run)"; fi

logs-all: ## View logs from all Docker services
	@if $(DOCKER_OK); then \
		test -f $(COMPOSE_FILE) || { echo "$(COMPOSE_FILE) does not exist yet"; exit 1; }; \
		$(COMPOSE) logs -f --tail=100; \
	else $(no_docker); echo "(native logs: $(APP_LOG), $(LOCAL_DIR)/redis/redis.log, $(LOCAL_DIR)/pg/postgres.log)"; fi

stats: ## Show Docker container stats
	@if $(DOCKER_OK); then docker stats --no-stream; \
	else $(no_docker); fi

grafana: ## Open Grafana in a browser (Docker stack, admin/admin)
	@if $(DOCKER_OK); then \
		echo "Grafana: $(GRAFANA_URL) (admin/admin)"; \
		(command -v xdg-open >/dev/null && xdg-open $(GRAFANA_URL) >/dev/null 2>&1) || (command -v open >/dev/null && open $(GRAFANA_URL)) || true; \
	else $(no_docker); echo "(native: the app's own dashboard is at $(APP_URL)/)"; fi

prometheus: ## Open Prometheus in a browser (Docker stack)
	@if $(DOCKER_OK); then \
		echo "Prometheus: $(PROMETHEUS_URL)"; \
		(command -v xdg-open >/dev/null && xdg-open $(PROMETHEUS_URL) >/dev/null 2>&1) || (command -v open >/dev/null && open $(PROMETHEUS_URL)) || true; \
	else $(no_docker); echo "(native: scrape $(APP_URL)/metrics)"; fi

# ---------------------------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------------------------
test: services-install ## Run fmt check, clippy (-D warnings) and all tests
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test

fmt: ## Format the code (cargo fmt)
	$(CARGO) fmt --all

lint: ## Run the clippy linter (warnings are errors)
	$(CARGO) clippy --all-targets -- -D warnings

# ---------------------------------------------------------------------------------------------
# Observability: compose stack, dashboards checks
# ---------------------------------------------------------------------------------------------
export COMPOSE_PROJECT_NAME ?= analytics-demo
# Compose v1 resolves a relative seccomp path against the working directory: pass it absolute.
export SECCOMP_PROFILE ?= $(CURDIR)/docker/seccomp/io_uring.json

.PHONY: run-docker stop-docker logs-docker check-docker check-k8s test-dashboards dashboard-screenshot

run-docker: ## Start the compose stack (app 3000, Prometheus 9090, Grafana 3001 admin/admin, Redis 6379 + target 6380)
	@if $(DOCKER_OK); then \
		EVENTS_PER_SECOND=$(EVENTS_PER_SECOND) QUERIES_PER_SECOND=$(QUERIES_PER_SECOND) $(COMPOSE) up -d --build; \
		echo "Grafana: $(GRAFANA_URL) (admin/admin)  Prometheus: $(PROMETHEUS_URL)  App: http://127.0.0.1:3000/"; \
		echo "make health / make metrics work as on the native stack; logs: make logs-docker"; \
	else $(no_docker); fi

stop-docker: ## Stop the compose stack (keeps its volumes; docker compose down -v removes them)
	@if $(DOCKER_OK); then $(COMPOSE) down; else $(no_docker); fi

logs-docker: ## Follow the app container's log (compose stack)
	@if $(DOCKER_OK); then $(COMPOSE) logs -f --tail=100 app; \
	else $(no_docker); echo "(native logs: make logs)"; fi

check-docker: ## Validate docker/ without an engine: compose config, promtool check config, seccomp profile
	@bash docker/check.sh

check-k8s: ## Render every deploy/k8s overlay (kubectl kustomize) and validate it offline against the Kubernetes schemas
	@bash deploy/k8s/check.sh

test-dashboards: services-install ## Evaluate every Grafana panel query against a live app + Prometheus, lint /metrics, browser-test GET /
	@bash grafana/test-dashboards.sh

dashboard-screenshot: ## Screenshot the built-in dashboard of a running app (SCREENSHOT=/tmp/analytics-dashboard.png)
	@SCREENSHOT=$${SCREENSHOT:-/tmp/analytics-dashboard.png} bash grafana/browser-test.sh $(APP_URL)/

# ---------------------------------------------------------------------------------------------
# Migration rehearsals (.ci/migrate-demo.sh): source + target redis-server on free ports, the app
# at demo load, a live cutover, then `verify` on the target. Each target succeeds when the
# verdict is the expected one. Overrides: EVENTS_PER_SECOND, QUERIES_PER_SECOND, MIGRATE_SECONDS.
# ---------------------------------------------------------------------------------------------
.PHONY: migrate-demo migrate-demo-lossy migrate-demo-failover rehearse-scaled

MIGRATE_ENV = EVENTS_PER_SECOND=$(if $(filter command line environment,$(origin EVENTS_PER_SECOND)),$(EVENTS_PER_SECOND),50) \
	QUERIES_PER_SECOND=$(if $(filter command line environment,$(origin QUERIES_PER_SECOND)),$(QUERIES_PER_SECOND),150) \
	MIGRATE_SECONDS=$${MIGRATE_SECONDS:-10} APP_BIN='$(APP_BIN)' NO_BUILD='$(NO_BUILD)'

migrate-demo: services-install ## Rehearse a cutover: target replicates the source, switch, promote; expects verify CLEAN
	@$(MIGRATE_ENV) bash .ci/migrate-demo.sh replicated

migrate-demo-lossy: services-install ## Cutover to an empty target that never replicated; expects verify to find the loss
	@$(MIGRATE_ENV) bash .ci/migrate-demo.sh lossy

migrate-demo-failover: services-install ## Replicated source killed -9, replica promoted and switched to; shows what async replication may lose
	@$(MIGRATE_ENV) bash .ci/migrate-demo.sh failover

# Redis Cluster rehearsals (.ci/migrate-demo-cluster.sh): 3 primaries + 3 replicas on ports from
# 7300, a PostgreSQL of their own, the app on 7390. EVENTS_PER_SECOND / QUERIES_PER_SECOND only
# when given (reshard: the ultra preset; failover: 300 / 700); PHASE_SECONDS (10).
.PHONY: migrate-demo-reshard migrate-demo-cluster-failover migrate-demo-to-cluster

CLUSTER_DEMO_ENV = $(foreach v,EVENTS_PER_SECOND QUERIES_PER_SECOND,$(if $(filter command line environment,$(origin $(v))),$(v)=$($(v)))) \
	APP_BIN='$(APP_BIN)' NO_BUILD='$(NO_BUILD)'

migrate-demo-reshard: services-install ## Cluster under the ultra preset: reshard a third of the slots to one primary, rebalance back; expects 0 failed events, verify CLEAN
	@$(CLUSTER_DEMO_ENV) bash .ci/migrate-demo-cluster.sh reshard

migrate-demo-to-cluster: services-install ## Standalone under load copied into a cluster (redis-cli --cluster import --cluster-copy), then switch --wait to it; verify must find exactly the increments the source took after each key's copy
	@$(CLUSTER_DEMO_ENV) bash .ci/migrate-demo-cluster.sh to-cluster

migrate-demo-cluster-failover: services-install ## Cluster: CLUSTER FAILOVER (expects verify CLEAN), then kill -9 of a primary (loss within the async-replication window)
	@$(CLUSTER_DEMO_ENV) bash .ci/migrate-demo-cluster.sh failover

# ---------------------------------------------------------------------------------------------
# Benchmarks and profiling (bench/, perf/)
# ---------------------------------------------------------------------------------------------
.PHONY: bench bench-targets bench-efficiency bench-quick bench-micro perf-record perf-stat soak

rehearse-scaled: services-install ## One run of INSTANCES=3 processes started like an Indexed Job's pods (RUN_NAME, start barrier), DURATION=30 s at the ultra preset in total; report --run-name + verify --run-name, exits 0 on PASS
	@INSTANCES=$(or $(INSTANCES),3) DURATION=$(or $(DURATION),30) \
		EVENTS_PER_SECOND=$(if $(filter command line environment,$(origin EVENTS_PER_SECOND)),$(EVENTS_PER_SECOND),2000) \
		QUERIES_PER_SECOND=$(if $(filter command line environment,$(origin QUERIES_PER_SECOND)),$(QUERIES_PER_SECOND),8000) \
		bash .ci/rehearse-scaled.sh

bench: services-install ## Benchmark: bench-redis vs redis-benchmark, workload rates, event path (BENCH_QUICK=1 for a smoke run)
	@CARGO_TARGET_DIR=$(TARGET_DIR) bash bench/run.sh

bench-targets: services-install ## The performance targets, one run each: 100k q/s and 100k ev/s for 60 s, RSS, rate accuracy 10/s-100k/s
	@BENCH_STEPS=targets BENCH_COMMAND="make bench-targets" CARGO_TARGET_DIR=$(TARGET_DIR) bash bench/run.sh

bench-efficiency: services-install ## Client CPU per Redis command at ~1k/10k/50k commands/s and idle vs memtier (MEMTIER_BIN), raw mode vs redis-benchmark, flamegraphs
	@BENCH_STEPS=efficiency BENCH_COMMAND="make bench-efficiency" CARGO_TARGET_DIR=$(TARGET_DIR) bash bench/run.sh

bench-quick: ## Smoke run of make bench (short durations, 1 repetition)
	@BENCH_QUICK=1 CARGO_TARGET_DIR=$(TARGET_DIR) bash bench/run.sh

bench-micro: ## Criterion micro-benchmarks (RESP, keys, sampling, histograms), quick mode
	$(CARGO) bench --bench resp --bench workload --bench histogram -- --quick

# The soak runs the ultra preset unless EVENTS_PER_SECOND / QUERIES_PER_SECOND are given.
SOAK_ENV = EVENTS_PER_SECOND=$(if $(filter command line environment,$(origin EVENTS_PER_SECOND)),$(EVENTS_PER_SECOND),2000) \
	QUERIES_PER_SECOND=$(if $(filter command line environment,$(origin QUERIES_PER_SECOND)),$(QUERIES_PER_SECOND),8000) \
	SOAK_SECONDS='$(SOAK_SECONDS)' CARGO_TARGET_DIR=$(TARGET_DIR) NO_BUILD='$(NO_BUILD)'

soak: services-install ## Soak (not CI): ultra preset for SOAK_SECONDS=600, Redis + Postgres restarted once; RSS drift, panics, verify (bench/results/soak-*)
	@$(SOAK_ENV) bash bench/soak.sh

perf-record: services-install ## Profile the ultra preset ~20 s (perf record -g) and render perf/out/flamegraph.svg
	@CARGO_TARGET_DIR=$(TARGET_DIR) bash perf/profile.sh record

perf-stat: services-install ## perf stat counters for one run of the ultra preset
	@CARGO_TARGET_DIR=$(TARGET_DIR) bash perf/profile.sh stat
