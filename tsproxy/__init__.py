"""tsproxy runtime: the CLI, the instance lifecycle and (later) the proxy and DNS responder.

May import tsproxy_generator (the conf model); the boot path never imports this package.
"""
