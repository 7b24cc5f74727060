"""A tiny HTTP server run as a pod's process by the PodRunner tests.

usage: echo_server.py HOST PORT [FILE...]; GET / answers JSON with the process's argv,
environment, working directory and the contents of each FILE.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path


class _Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        files = {name: Path(name).read_text() for name in sys.argv[3:]}
        body = json.dumps(
            {"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd(), "files": files}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    server = HTTPServer((sys.argv[1], int(sys.argv[2])), _Echo)
    print(f"echo server on {sys.argv[1]}:{sys.argv[2]}", flush=True)
    server.serve_forever()
