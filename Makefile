# tsproxy: `make test` runs every tier, `make deb` builds the package, `make repo` a signed apt
# repository of it, `make demo` shows it running in a throwaway booted Debian, `make bench`
# measures the speed goals.

# Debian's python3 and tools first: the package runs with them, so the tests do too.
export PATH := /usr/sbin:/usr/bin:/sbin:/bin:$(PATH)
PYTHON := /usr/bin/python3
VERSION := $(shell dpkg-parsechangelog -S Version 2>/dev/null)
DEB := dist/tsproxy_$(VERSION)_all.deb

.PHONY: test deps build-deps deb repo demo bench clean

test: deps deb
	$(PYTHON) -m pytest

deps:
	tools/install-deps test

# Only what debian/control's Build-Depends name, and lintian.
build-deps:
	tools/install-deps build

# Built in a copy of the tree so dpkg-buildpackage's outputs never land in the checkout
# or beside it. The .buildinfo (what it was built with) and the .changes go to dist/ with it.
deb: $(DEB)
$(DEB): $(shell git ls-files 2>/dev/null) | build-deps
	rm -rf build/pkg && mkdir -p build/pkg/src dist
	tar -c --exclude=./build --exclude=./dist --exclude=./.git . | tar -x -C build/pkg/src
	cd build/pkg/src && dpkg-buildpackage -us -uc -A --no-sign >../build.log 2>&1 \
		|| { tail -40 ../build.log; exit 1; }
	lintian --fail-on error,warning build/pkg/tsproxy_$(VERSION)_all.changes
	mv build/pkg/tsproxy_$(VERSION)_all.deb build/pkg/tsproxy_$(VERSION)_all.buildinfo \
		build/pkg/tsproxy_$(VERSION)_all.changes dist/
	@echo "built $(DEB)"

# A signed apt repository of the package in dist/apt (see tools/make-repo for the key).
repo: $(DEB)
	tools/install-deps repo
	tools/make-repo

demo: deps deb
	$(PYTHON) tests/demo.py

# Figures go to build/bench/*.json; BENCH_BASELINE=TREE (a worktree of main, say) also measures
# that tree's proxy and DNS responder in the same turns.
bench: deps deb
	tools/bench-generator
	tools/bench-start
	tools/bench-proxy $(if $(BENCH_BASELINE),--baseline $(BENCH_BASELINE))
	tools/bench-dns $(if $(BENCH_BASELINE),--baseline $(BENCH_BASELINE))

clean:
	rm -rf build dist .pytest_cache
