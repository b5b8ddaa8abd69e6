"""tsproxy runtime: the CLI, the instance lifecycle, the proxy and the DNS responder.

May import tsproxy_generator (the conf model); the boot path never imports this package.
"""

# The package's version, and setup.cfg's (version = attr:); tests/unit/test_version.py holds it
# to debian/changelog's, so `tsproxy --version` prints the installed Debian package's version.
__version__ = "0.1.0"
