# The front door. `make` lists the targets; long recipes live in scripts, not here.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON     ?= python3.11
VENV       ?= .venv
PY         := $(VENV)/bin/python
SIZE       ?= tiny
MODEL      ?= checkpoints/$(SIZE)
CHECKPOINT ?= $(MODEL)
VARIANTS   ?= fp32,fp16,int8,int8_dynamic
OUT        ?= artifacts/$(notdir $(CHECKPOINT))
PYTEST_ARGS ?=
HTTP_PORT  ?= 8000
GRPC_PORT  ?= 8001
METRICS_PORT ?= 8002
PRECISION  ?= fp16
MAX_VISUAL_TOKENS ?=
SERVE_ARGS ?=
GATEWAY_PORT ?= 8080

STAMP := $(VENV)/.installed
# The random checkpoint size CHECKPOINT names (checkpoints/medium -> medium), empty for any other checkpoint.
RANDOM_SIZES := tiny medium wide real
RANDOM_SIZE = $(filter $(notdir $(CHECKPOINT)),$(RANDOM_SIZES))

.PHONY: help setup checkpoint export serve gateway demo helm-lint test test-fast container-venv test-container-env gpu-check test-slow lint format bench bench-export bench-memory bench-pooling bench-catalog bench-scale soak clean

help: ## list the targets (bold names on a terminal, plain text when piped)
	@if [ -t 1 ]; then bold='\033[1m'; plain='\033[0m'; else bold=; plain=; fi; \
	grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	awk -F':.*## ' -v b="$$bold" -v p="$$plain" '{printf "  %s%-18s%s %s\n", b, $$1, p, $$2}'

$(STAMP): requirements/dev.txt requirements/serving.txt requirements/export.txt requirements/colpali.txt client/pyproject.toml scripts/setup.sh scripts/fetch_k8s_tools.sh
	scripts/setup.sh "$(PYTHON)" "$(VENV)"
	@touch $@

setup: $(STAMP) ## create .venv with the pinned dependencies (idempotent)

checkpoint: $(STAMP) ## build the offline random checkpoint SIZE=tiny|medium|wide|real into checkpoints/SIZE (or MODEL=checkpoints/<size>)
	$(PY) -m export.random_checkpoint $(CHECKPOINT) --size $(or $(RANDOM_SIZE),$(SIZE))

export: $(STAMP) ## export CHECKPOINT to validated ONNX in OUT (VARIANTS); a missing checkpoints/<size> is built first
	@if [ ! -f "$(CHECKPOINT)/config.json" ] && [ "$(CHECKPOINT)" = "checkpoints/$(RANDOM_SIZE)" ]; then \
		echo "building the random $(RANDOM_SIZE) checkpoint into $(CHECKPOINT) (offline, real architecture)"; \
		$(PY) -m export.random_checkpoint $(CHECKPOINT) --size $(RANDOM_SIZE); fi
	$(PY) -m export --checkpoint $(CHECKPOINT) --out $(OUT) --variants $(VARIANTS)

# What this host serves for PRECISION (a CPU host: fp16 -> fp32, int8 -> int8_dynamic): all `make serve` and
# `make demo` export when OUT is missing (a full export of the same checkpoint, cached, answers it too).
SERVED_VARIANTS = $(shell $(PY) -c 'from model_repository.render import served_variants; print(served_variants("$(PRECISION)"))')
serve: $(STAMP) ## run Triton on 127.0.0.1 (HTTP 8000, gRPC 8001, metrics 8002) for MODEL (PRECISION=fp16|int8|fp16,int8, MAX_VISUAL_TOKENS)
	@[ -f "$(OUT)/manifest.json" ] || $(MAKE) --no-print-directory export CHECKPOINT="$(CHECKPOINT)" OUT="$(OUT)" VARIANTS="$(SERVED_VARIANTS)"
	exec $(PY) -m model_repository.serve --artifacts "$(OUT)" --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) \
		--precision $(PRECISION) $(if $(MAX_VISUAL_TOKENS),--max-visual-tokens $(MAX_VISUAL_TOKENS)) $(SERVE_ARGS)

gateway: $(STAMP) ## the REST gateway (/embed, /embed_batch, /health) on 127.0.0.1:GATEWAY_PORT in front of `make serve`
	exec $(VENV)/bin/colqwen2-gateway --triton-url grpc://127.0.0.1:$(GRPC_PORT) --port $(GATEWAY_PORT)

demo: $(STAMP) ## offline demo: Triton + embedded Qdrant index sample charts and photos, then search by text and image
	@[ -f "$(OUT)/manifest.json" ] || $(MAKE) --no-print-directory export CHECKPOINT="$(CHECKPOINT)" OUT="$(OUT)" VARIANTS="$(SERVED_VARIANTS)"
	$(PY) -m demo --artifacts "$(OUT)"

helm-lint: $(STAMP) ## the Helm chart and the image: lint --strict and Kubernetes schema validation of every render, chart and Dockerfile checks (in `make test` too)
	$(PY) -m pytest -q tests/test_helm.py tests/test_docker.py

# The image's Python (docker/base-image.env) and pins (docker/requirements-serving.txt) in CONTAINER_VENV: the
# servers' Python-backend stubs, the gateway and the CLI run on it in `make test` (the references stay in .venv),
# as they run in the image. Standard library only, so it builds beside `make setup` (`make -j2 setup container-venv`).
CONTAINER_VENV ?= .venv-container
container-venv: ## build CONTAINER_VENV: the image's Python with exactly the image's pins (idempotent); resolve the exporter stage's pins for it
	$(PYTHON) scripts/container_env.py build --venv $(CONTAINER_VENV)
	$(PYTHON) scripts/container_env.py exporter-dry-run --venv $(CONTAINER_VENV)

# Three workers on two cores (a third of the suite's time is waiting on servers and subprocesses); a module's tests
# stay on one, the timed suites share one (tests/conftest.py). The 25 slowest tests are listed at the end.
PYTEST_WORKERS ?= 3
test: $(STAMP) container-venv ## the test suite, everything but the real-size checks (real colpali-engine, ONNX Runtime, Triton on the image's Python, Qdrant, helm, the READMEs run)
	COLQWEN2_SERVING_VENV=$(CONTAINER_VENV) $(PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS) --durations=25 $(PYTEST_ARGS)

# The edit loop: no server but one real-Triton smoke test, no docs run, no exports beyond the cached tiny one.
FAST_TESTS ?= tests/test_grid.py tests/test_letterbox.py tests/test_resampling.py tests/test_serving_imaging.py \
	tests/test_serving_prompts.py tests/test_serving_runners.py tests/test_model_adapters.py tests/test_render.py \
	tests/test_graph_checks.py tests/test_catalog.py tests/test_muvera.py tests/test_client.py tests/test_client_core.py \
	tests/test_export_cache.py tests/test_processes.py tests/test_checkpoint.py tests/test_random_checkpoint.py \
	tests/test_stores.py tests/test_helm.py tests/test_docker.py \
	"tests/test_triton_server.py::test_every_size_gets_colpalis_vectors_at_native_resolution"
test-fast: $(STAMP) ## unit tests and one real-Triton smoke (the edit loop: about 2 minutes once the tiny export is cached)
	$(PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS) --durations=10 $(FAST_TESTS) $(PYTEST_ARGS)

# The serving suites alone on the image's Python (`make test` runs them too, once).
CONTAINER_TESTS ?= tests/test_container_env.py tests/test_triton_server.py tests/test_cli.py tests/test_gateway.py \
	tests/test_health.py tests/test_overload.py tests/test_security.py
test-container-env: $(STAMP) container-venv ## the serving suites on the image's Python and pins, and the exporter stage's pins resolved
	COLQWEN2_SERVING_VENV=$(CONTAINER_VENV) $(PY) -m pytest -m "not slow" $(CONTAINER_TESTS) $(PYTEST_ARGS)

GPU_CHECK_ARGS ?=
gpu-check: $(STAMP) ## export wrappers of the real-size random checkpoint on CUDA: fp32/fp16/bf16, fixed and native; report in bench/results (CPU host: a tiny dry run)
	$(PY) -m bench.gpu_check $(GPU_CHECK_ARGS)

test-slow: $(STAMP) ## slow tests: fp16 export of the real-size (2.2 B) random checkpoint, 11 min here
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# BENCH_SIZE picks the random checkpoint: medium (the CPU ratio targets), wide (real layer widths,
# 8 layers), real (Qwen2-VL-2B shapes, for a GPU host: add BENCH_ARGS="--device gpu").
BENCH_SIZE ?= medium
BENCH_ARTIFACTS ?= artifacts/$(BENCH_SIZE)
bench: $(STAMP) ## serving benchmark (BENCH_SIZE=medium): Triton sweep vs in-process references, report + plots, two sweeps (~35 min on medium)
	@[ -f "$(BENCH_ARTIFACTS)/manifest.json" ] || { [ -f checkpoints/$(BENCH_SIZE)/config.json ] || \
		$(PY) -m export.random_checkpoint checkpoints/$(BENCH_SIZE) --size $(BENCH_SIZE); \
		$(PY) -m export --checkpoint checkpoints/$(BENCH_SIZE) --out $(BENCH_ARTIFACTS); }
	$(PY) -m bench.serving --artifacts "$(BENCH_ARTIFACTS)" $(BENCH_ARGS)

bench-export: $(STAMP) ## CPU speed record: PyTorch vs ORT fp32/fp16/int8 graphs on the medium checkpoint, mixed workload
	$(PY) -m bench.graph_speed --size medium --repeats 3

bench-memory: $(STAMP) ## memory of the real-size checkpoint per precision: weight bytes, activation peaks from the graphs, fits 8 GB / 4 GB?
	$(PY) -m bench.memory

bench-pooling: $(STAMP) ## token pooling at index time: storage saved vs ranking changes (demo images, OUT's export)
	@[ -f "$(OUT)/manifest.json" ] || $(MAKE) --no-print-directory export CHECKPOINT="$(CHECKPOINT)" OUT="$(OUT)"
	$(PY) -m bench.token_pooling --artifacts "$(OUT)"

bench-catalog: $(STAMP) ## catalog indexing: bulk speed vs raw embedding, first-stage recall@10 vs exact MaxSim (2000 images, OUT's export)
	@[ -f "$(OUT)/manifest.json" ] || $(MAKE) --no-print-directory export CHECKPOINT="$(CHECKPOINT)" OUT="$(OUT)"
	$(PY) -m bench.catalog --artifacts "$(OUT)" $(BENCH_ARGS)

SCALE_ITEMS ?= 10000 100000
bench-scale: $(STAMP) ## catalog search at scale: Qdrant in process at SCALE_ITEMS items: build, recall@10 vs exact MaxSim, latency, refresh (~1 h)
	@[ -f "$(OUT)/manifest.json" ] || $(MAKE) --no-print-directory export CHECKPOINT="$(CHECKPOINT)" OUT="$(OUT)"
	$(PY) -m bench.scale --artifacts "$(OUT)" --items $(SCALE_ITEMS) $(BENCH_ARGS)

DURATION ?= 1800
soak: $(STAMP) ## DURATION seconds of mixed traffic (SDK, gateway, 5 % bad input, health) against `make serve`: fails on any error for a good input or on growing memory
	@[ -f "$(OUT)/manifest.json" ] || $(MAKE) --no-print-directory export CHECKPOINT="$(CHECKPOINT)" OUT="$(OUT)"
	$(PY) -m bench.soak --artifacts "$(OUT)" --duration $(DURATION)

clean: ## remove artifacts and checkpoints (keeps .venv)
	rm -rf artifacts checkpoints
