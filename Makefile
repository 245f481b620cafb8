# nhi-broker: `make local` runs the whole system on loopback; `make test` runs every test.
# Both install what they need (a Python venv with moto and cfn-lint) on first use.

VENV := .venv
STAMP := $(VENV)/.installed-$(shell cksum < infra/local/requirements.txt | cut -d' ' -f1)

.PHONY: local test lint venv clean deploy-venv deploy-build bench-coldstart bench-client

DEPLOY_VENV := .venv-deploy
SAM := PATH=$(CURDIR)/$(DEPLOY_VENV)/bin:$$PATH SAM_CLI_TELEMETRY=0 $(DEPLOY_VENV)/bin/sam

$(STAMP): infra/local/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/local/requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

local: venv
	bash infra/local/stack.sh local

lint: venv
	$(VENV)/bin/cfn-lint template.yaml
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings

test: lint
	bash infra/local/stack.sh test

# Deploy tooling (SAM CLI, cargo-lambda, zig), kept apart from the test venv: it is large.
$(DEPLOY_VENV)/.installed: infra/deploy/requirements.txt
	python3 -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/deploy/requirements.txt
	touch $@

deploy-venv: $(DEPLOY_VENV)/.installed

# Four bootstrap binaries in .aws-sam/build/<Function>/ (sam deploy --guided takes it from there).
# ARCH: arm64 (the template's default) or x86_64; deploy with the same Architecture.
ARCH ?= arm64
deploy-build: deploy-venv
	$(SAM) validate --lint --region us-east-1
	$(SAM) build --beta-features --build-in-source --parameter-overrides Architecture=$(ARCH)

# Cold start, warm latency and peak memory of the built functions, against moto (measurement only).
# The binaries run here, so they are built for this machine's architecture.
bench-coldstart: ARCH = $(if $(filter aarch64 arm64,$(shell uname -m)),arm64,x86_64)
bench-coldstart: venv deploy-build
	bash infra/local/stack.sh bench

# The nhi client's size, start-up time and peak memory, against /bin/true and curl in the same run.
bench-client:
	cargo build --release -p nhi-client
	python3 infra/bench/client_start.py target/release/nhi

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) .local .aws-sam
