"""The proxy: SOCKS5 and HTTP CONNECT on one inherited socket, dialing out through tailscale0.

server.py accepts; connection.py serves each connection from loop callbacks (driven.py,
poller.py), a Task only while it awaits something (handshake, access, names, egress, dial);
relay.py moves the bytes with splice(2) through pooled pipes (pipes.py); access.py, limits.py
and egress.py decide who may connect, how many, and where to; stats.py counts and logs.
"""
