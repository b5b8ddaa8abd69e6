# tsproxy: `make test` runs every tier, `make deb` builds the package, `make demo` shows it
# running in a throwaway booted Debian, `make bench` measures the speed goals.

# Debian's python3 and tools first: the package runs with them, so the tests do too.
export PATH := /usr/sbin:/usr/bin:/sbin:/bin:$(PATH)
PYTHON := /usr/bin/python3
VERSION := $(shell dpkg-parsechangelog -S Version 2>/dev/null)
DEB := dist/tsproxy_$(VERSION)_all.deb

.PHONY: test deps deb demo bench clean

test: deps deb
	$(PYTHON) -m pytest

deps:
	tools/install-deps

# Built in a copy of the tree so dpkg-buildpackage's outputs never land in the checkout
# or beside it.
deb: $(DEB)
$(DEB): $(shell git ls-files 2>/dev/null) | deps
	rm -rf build/pkg && mkdir -p build/pkg/src dist
	tar -c --exclude=./build --exclude=./dist --exclude=./.git . | tar -x -C build/pkg/src
	cd build/pkg/src && dpkg-buildpackage -us -uc -b --no-sign >../build.log 2>&1 \
		|| { tail -40 ../build.log; exit 1; }
	lintian --fail-on error,warning build/pkg/tsproxy_$(VERSION)_all.deb
	mv build/pkg/tsproxy_$(VERSION)_all.deb dist/
	@echo "built $(DEB)"

demo: deps deb
	$(PYTHON) tests/demo.py

bench: deps deb
	tools/bench-generator
	tools/bench-start
	tools/bench-proxy
	tools/bench-dns

clean:
	rm -rf build dist .pytest_cache
