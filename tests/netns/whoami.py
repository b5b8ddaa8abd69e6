"""A tiny HTTP server that answers with the client's address: it shows where NAT left a
connection's source. Usage: whoami.py ADDRESS PORT; prints a line once it listens."""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WhoAmI(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), WhoAmI)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
