"""A SPIFFE bundle endpoint of the https_web profile written with the
Python standard library only: serves the bundle document in DOCUMENT (read
again for each request, so a test can publish a new one) at / over TLS
with a host-name certificate, until stdin closes.

    bundle_server.py CERT KEY DOCUMENT

Prints the port it listens on (127.0.0.1), then serves.
"""

import http.server
import ssl
import sys
import threading


def main() -> None:
    cert, key, document_path = sys.argv[1:4]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/":
                self.send_error(404)
                return
            with open(document_path, "rb") as f:
                document = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()


if __name__ == "__main__":
    main()
