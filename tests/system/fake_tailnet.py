"""A simulated tailnet behind one instance, for tests that need the proxy to reach something.

The proxy dials only through its namespace's tailscale0. With no control server in the
system tier, the instances' tailscaled run with userspace networking (DROP_IN, after the
generator's: they make no tailscale0 of their own, and still answer on their LocalAPI socket;
a conf cannot ask for that, tsproxy refuses --tun in tailscaled_args), and a veth named
tailscale0 inside ts-NAME leads to a namespace of its own, tailnet-NAME, where a web server
listens on PEER. Every instance gets the same PEER address, as two real tailnets would both
hand out 100.64.0.N: the answer (the instance's name) says which tailnet was reached.
"""

from __future__ import annotations

from nspawn import Container, wait_for

DROP_IN = ("/etc/systemd/system/tsproxy-tailscaled@.service.d/90-fake-tailnet.conf",
           "[Service]\nEnvironment=TSPROXY_TAILSCALED_ARGS=--tun=userspace-networking\n")
PEER = "100.64.0.80"
PORT = 8080
SLOW_PATH = "/slow"  # answered after SLOW seconds: a request still in flight at a restart
SLOW = 1.0

WEB = f"""import http.server, sys, time
class Peer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "{SLOW_PATH}":
            time.sleep({SLOW})
        body = sys.argv[1].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("{PEER}", {PORT}), Peer).serve_forever()
"""


def attach(container: Container, name: str) -> None:
    """Give the running instance `name` its simulated tailnet (ts-NAME must exist)."""
    container.write_file("/root/tailnet_web.py", WEB)
    container.run(f"""set -e
ip netns add tailnet-{name}
ip -n tailnet-{name} link add eth0 type veth peer name tailscale0 netns ts-{name}
ip -n tailnet-{name} addr add {PEER}/24 dev eth0
ip -n tailnet-{name} link set eth0 up
ip -n tailnet-{name} link set lo up
ip -n ts-{name} addr add 100.64.0.1/24 dev tailscale0
ip -n ts-{name} link set tailscale0 up
systemd-run --unit=tailnet-web-{name} -p NetworkNamespacePath=/run/netns/tailnet-{name} \
    /usr/bin/python3 /root/tailnet_web.py {name}
""")
    # Listening before anyone asks: a proxy reaching a peer that does not listen yet is
    # refused (REP 5), which a test would take for the proxy's fault.
    listening = f"ip netns exec tailnet-{name} ss -Hltn 'sport = :{PORT}'"
    try:
        wait_for(lambda: container.run(listening).stdout.strip(), what=f"tailnet-{name} web")
    except AssertionError:
        unit = container.run(f"systemctl status --no-pager -n 20 tailnet-web-{name}",
                             check=False).stdout
        raise AssertionError(f"the web server of tailnet-{name} is not listening on "
                             f"{PEER}:{PORT}:\n{unit}") from None
