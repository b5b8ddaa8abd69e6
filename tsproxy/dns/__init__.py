"""The DNS responder: every tailnet's names on the host's tailnet address (tsproxy-dns.service).

zones.py maps names to tailnets, fast.py answers the hot question shape by hand, answer.py
answers everything (dnslib), server.py owns the sockets.
"""
