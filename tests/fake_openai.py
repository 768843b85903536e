"""A fake OpenAI-compatible chat server on loopback: scripted replies, a served model name, a request log."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

from tests.loopback import LoopbackServer


class FakeOpenAIServer(LoopbackServer):
    """`script` is a list of (status, content) used in order, then `default` forever. `delay` seconds per reply."""

    def __init__(
        self,
        model: str = "fake-judge",
        default: tuple[int, str] = (200, "Safe.\n#thescore: 1"),
        script: list[tuple[int, str]] | None = None,
        delay: float = 0.0,
    ):
        self.model, self.default, self.script, self.delay = model, default, list(script or []), delay
        self.requests: list[dict] = []
        self.reply_fn = None  # body -> content, overrides the script and default when set
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    status, content = server.script.pop(0) if server.script else server.default
                    if server.reply_fn is not None:
                        status, content = 200, server.reply_fn(body)
                time.sleep(server.delay)
                if body.get("model") != server.model:
                    status, content = 404, f"model {body.get('model')} not found"
                if status != 200:
                    payload = json.dumps({"error": content}).encode()
                else:
                    payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

        self.url = f"http://127.0.0.1:{self.serve(Handler)}/v1"
