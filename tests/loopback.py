"""A stand-in HTTP server on 127.0.0.1 (a free port) for the fakes of remote services (a judge, the Hub)."""

import threading
from http.server import ThreadingHTTPServer


class LoopbackServer:
    """Serves `handler` on a free loopback port while the `with` block runs; `port` is the port."""

    def serve(self, handler) -> int:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        return self.httpd.server_address[1]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
