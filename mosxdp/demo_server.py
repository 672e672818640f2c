"""The demo's HTTP server: GET serves files, PUT stores the body as uploaded.bin."""
import http.server
import os
import socket
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_PUT(self):
        length = int(self.headers.get("Content-Length", "0"))
        remaining = length
        with open(os.path.join(self.server.upload_dir, "uploaded.bin"), "wb") as f:
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                f.write(chunk)
                remaining -= len(chunk)
        self.send_response(201 if not remaining else 400)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class DualStackServer(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self):
        # One socket for IPv4 and IPv6 clients.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main():
    port, root, upload_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    os.chdir(root)
    server = DualStackServer(("::", port), Handler)
    server.upload_dir = upload_dir
    server.serve_forever()


if __name__ == "__main__":
    main()
