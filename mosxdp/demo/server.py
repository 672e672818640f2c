"""The HTTP server of the demo, the live tests and the soak (run in the server namespace).

    python -m mosxdp.demo.server ROOT PORT [PORT ...] [--upload-dir D] [--access-log F]

One dual-stack (IPv4 and IPv6) listener per port, all serving ROOT:
- GET /NAME: the file ROOT/NAME;
- GET /stream/N: N zero bytes, written as fast as the client reads them;
- ?rate=R after either: the body written at R bytes per second at most (a paced server:
  a client's own rate limit does not hold when the path is fast, curl's --limit-rate
  lets a 2 MiB file through in milliseconds);
- PUT: the body's SHA-256 in hex as the response body; with --upload-dir the body is
  also stored there as uploaded.bin;
- --access-log: one line per request, ``CLIENT_IP CLIENT_PORT SERVER_PORT 'REQUEST LINE'``;
- --tls PORT --cert PEM --key PEM: the same over HTTPS on PORT (TLS 1.2 and 1.3, ALPN
  http/1.1); the handshake runs in the connection's thread, not the accept loop.
"""
import argparse
import functools
import hashlib
import http.server
import os
import shutil
import socket
import ssl
import threading
import time
import urllib.parse

CHUNK = 1 << 16
PACED_CHUNK = 1 << 13     # writes of a paced body: small, so the pace is smooth


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
        url = urllib.parse.urlsplit(self.path)
        rate = urllib.parse.parse_qs(url.query).get("rate")
        self.rate = int(rate[0]) if rate else 0
        if not url.path.startswith("/stream/"):
            return super().do_GET()
        left = int(url.path.rsplit("/", 1)[1])
        self.send_response(200)
        self.send_header("Content-Length", str(left))
        self.end_headers()
        zeros = bytes(CHUNK)
        try:
            self._write(zeros[:min(left, CHUNK)] for left in range(left, 0, -CHUNK))
        except OSError:
            pass   # the client went away: that is what some tests do

    def copyfile(self, source, outputfile):
        if not self.rate:
            return shutil.copyfileobj(source, outputfile)
        self._write(iter(lambda: source.read(PACED_CHUNK), b""))

    def _write(self, chunks):
        """The chunks to the client, at self.rate bytes per second at most (0: at once)."""
        rate = self.rate
        if rate:
            chunks = (c[i:i + PACED_CHUNK] for c in chunks for i in range(0, len(c), PACED_CHUNK))
        start, sent = time.monotonic(), 0
        for chunk in chunks:
            if rate:
                delay = start + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.wfile.write(chunk)
            sent += len(chunk)

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


class TlsServer(DualStackServer):
    def __init__(self, address, handler, context: ssl.SSLContext):
        self.context = context
        super().__init__(address, handler)

    def get_request(self):
        raw, addr = self.socket.accept()
        return self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        pass   # a client that gives up mid-handshake or mid-body is the client's business


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m mosxdp.demo.server", description=__doc__.split("\n")[0])
    ap.add_argument("root", help="directory to serve")
    ap.add_argument("ports", nargs="+", type=int, help="TCP ports to listen on")
    ap.add_argument("--upload-dir", help="store PUT bodies here as uploaded.bin")
    ap.add_argument("--access-log", help="append one line per request to this file")
    ap.add_argument("--tls", type=int, metavar="PORT", help="also serve HTTPS on PORT")
    ap.add_argument("--cert", help="with --tls: the certificate (PEM)")
    ap.add_argument("--key", help="with --tls: its private key (PEM)")
    args = ap.parse_args(argv)
    if args.tls is not None and not (args.cert and args.key):
        ap.error("--tls needs --cert and --key")
    access_log = open(args.access_log, "a", buffering=1) if args.access_log else None
    handler = functools.partial(Handler, directory=args.root)
    for port in args.ports:
        server = DualStackServer(("::", port), handler)
        server.upload_dir, server.access_log = args.upload_dir, access_log
        threading.Thread(target=server.serve_forever, daemon=True).start()
    if args.tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(args.cert, args.key)
        context.set_alpn_protocols(["http/1.1"])
        server = TlsServer(("::", args.tls), handler, context)
        server.upload_dir, server.access_log = args.upload_dir, access_log
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
