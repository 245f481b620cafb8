# nhi-broker: `make local` runs the whole system on loopback; `make test` runs every test.
# Both install what they need (a Python venv with moto and cfn-lint) on first use.

VENV := .venv
STAMP := $(VENV)/.installed-$(shell cksum < infra/local/requirements.txt | cut -d' ' -f1)

.PHONY: local test lint venv clean

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

clean:
	rm -rf $(VENV) .local
