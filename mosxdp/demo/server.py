"""The HTTP server of the demo, the live tests and the soak (run in the server namespace).

    python -m mosxdp.demo.server ROOT PORT [PORT ...] [--upload-dir D] [--access-log F]

One dual-stack (IPv4 and IPv6) listener per port, all serving ROOT:
- GET /NAME: the file ROOT/NAME;
- GET /stream/N: N zero bytes, written as fast as the client reads them;
- PUT: the body's SHA-256 in hex as the response body; with --upload-dir the body is
  also stored there as uploaded.bin;
- --access-log: one line per request, ``CLIENT_IP CLIENT_PORT SERVER_PORT 'REQUEST LINE'``.
"""
import argparse
import functools
import hashlib
import http.server
import os
import socket
import threading

CHUNK = 1 << 16


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_PUT(self):
        left = int(self.headers.get("Content-Length", "0"))
        digest = hashlib.sha256()
        upload_dir = self.server.upload_dir
        store = open(os.path.join(upload_dir, "uploaded.bin"), "wb") if upload_dir else None
        try:
            while left:
                chunk = self.rfile.read(min(left, CHUNK))
                if not chunk:
                    break
                digest.update(chunk)
                if store:
                    store.write(chunk)
                left -= len(chunk)
        finally:
            if store:
                store.close()
        body = digest.hexdigest().encode()
        self.send_response(200 if not left else 400)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if not self.path.startswith("/stream/"):
            return super().do_GET()
        left = int(self.path.rsplit("/", 1)[1])
        self.send_response(200)
        self.send_header("Content-Length", str(left))
        self.end_headers()
        zeros = bytes(CHUNK)
        try:
            while left:
                n = min(left, CHUNK)
                self.wfile.write(zeros[:n])
                left -= n
        except OSError:
            pass   # the client went away: that is what some tests do

    def log_message(self, fmt, *args):
        log = self.server.access_log
        if log is not None:
            host, port = self.client_address[:2]
            log.write(f"{host.removeprefix('::ffff:')} {port} {self.server.server_port} "
                      f"{self.requestline!r}\n")


class DualStackServer(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    request_queue_size = 256   # bursts of short connections (the soak)

    def server_bind(self):
        # One socket for IPv4 and IPv6 clients.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m mosxdp.demo.server", description=__doc__.split("\n")[0])
    ap.add_argument("root", help="directory to serve")
    ap.add_argument("ports", nargs="+", type=int, help="TCP ports to listen on")
    ap.add_argument("--upload-dir", help="store PUT bodies here as uploaded.bin")
    ap.add_argument("--access-log", help="append one line per request to this file")
    args = ap.parse_args(argv)
    access_log = open(args.access_log, "a", buffering=1) if args.access_log else None
    handler = functools.partial(Handler, directory=args.root)
    for port in args.ports:
        server = DualStackServer(("::", port), handler)
        server.upload_dir, server.access_log = args.upload_dir, access_log
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
