"""A fake Hugging Face Hub on loopback: dataset repos with commits, the endpoints `datasets` and `huggingface_hub` call.

Served: dataset info (`/api/datasets/R` and `/api/datasets/R/revision/REV`), the file listing (`/tree/REV/PATH`,
`/paths-info/REV`) and file downloads (`/datasets/R/resolve/REV/PATH`, with byte ranges). An unknown repo, revision or
file is a 404 carrying the Hub's `X-Error-Code` header (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`), which
`huggingface_hub` turns into its own exception types. Point a process at it with `HF_ENDPOINT=hub.url`.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from tests.loopback import LoopbackServer


def parquet_bytes(rows: list[dict]) -> bytes:
    """A parquet file of `rows` (all with the same string keys)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def dataset_card(configs: dict[str | None, dict[str, str]]) -> bytes:
    """A README.md whose YAML header declares `configs` ({config or None (default): {split: path pattern}})."""
    lines = ["---", "configs:"]
    for config, splits in configs.items():
        lines += [f"- config_name: {config or 'default'}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {pattern}" for split, pattern in splits.items()]
    return "\n".join([*lines, "---", "", "A stand-in dataset for tests.", ""]).encode()


class FakeHub(LoopbackServer):
    """`add(repo, files)` records a commit (files: path -> bytes) and returns its sha; `main` is the latest commit."""

    def __init__(self):
        self.repos: dict[str, list[tuple[str, dict[str, bytes]]]] = {}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub.handle(self, head=True)

            def do_GET(self):
                hub.handle(self)

            def do_POST(self):
                hub.handle(self)

        self.url = f"http://127.0.0.1:{self.serve(Handler)}"

    def add(self, repo: str, files: dict[str, bytes], sha: str | None = None) -> str:
        """Record a commit of `repo` holding `files` (path -> bytes), with the given sha or a made-up one."""
        commits = self.repos.setdefault(repo, [])
        sha = sha or hashlib.sha1(f"{repo}:{len(commits)}:{sorted(files)}".encode()).hexdigest()
        commits.append((sha, dict(files)))
        return sha

    # ---- request handling
    def commit(self, repo: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        commits = self.repos[repo]
        if revision == "main":
            return commits[-1]
        return next((c for c in commits if c[0] == revision), None)

    def handle(self, request: BaseHTTPRequestHandler, head: bool = False) -> None:
        url = urlsplit(request.path)
        path = unquote(url.path)
        self.requests.append(f"{request.command} {request.path}")
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        routes = [
            (r"/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self.resolve),
            (r"/api/datasets/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<file>.*))?", self.tree),
            (r"/api/datasets/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)", self.paths_info),
            (r"/api/datasets/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?", self.info),
        ]
        for pattern, route in routes:
            match = re.fullmatch(pattern, path)
            if match:
                repo = match["repo"]
                if repo not in self.repos:
                    return self.reply(request, 404, {"error": "Repository not found"}, head, "RepoNotFound")
                commit = self.commit(repo, match.groupdict().get("rev") or "main")
                if commit is None:
                    return self.reply(request, 404, {"error": "Invalid rev id"}, head, "RevisionNotFound")
                groups = {k: v for k, v in match.groupdict().items() if k not in ("repo", "rev")}
                return route(request, head, repo, commit, body=body, query=parse_qs(url.query), **groups)
        self.reply(request, 404, {"error": f"no route {path}"}, head)

    def reply(self, request, status, payload, head=False, error_code=None, headers=None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json" if not isinstance(payload, bytes) else "text/plain")
        request.send_header("Content-Length", str(len(data)))
        if error_code:
            request.send_header("X-Error-Code", error_code)
            request.send_header("X-Error-Message", payload["error"])
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        if not head:
            request.wfile.write(data)

    def resolve(self, request, head, repo, commit, file, **_):
        sha, files = commit
        if file not in files:
            return self.reply(request, 404, {"error": "Entry not found"}, head, "EntryNotFound", {"X-Repo-Commit": sha})
        data = files[file]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"', "Accept-Ranges": "bytes"}
        status, ranged = 200, request.headers.get("Range")
        if ranged:
            start, _, stop = ranged.removeprefix("bytes=").partition("-")
            begin, end = int(start or 0), min(int(stop) if stop else len(data) - 1, len(data) - 1)
            headers["Content-Range"] = f"bytes {begin}-{end}/{len(data)}"
            data, status = data[begin : end + 1], 206
        self.reply(request, status, data, head, headers=headers)

    def entry(self, files: dict[str, bytes], path: str) -> dict:
        if path in files:
            return {
                "type": "file",
                "path": path,
                "size": len(files[path]),
                "oid": hashlib.sha1(files[path]).hexdigest(),
            }
        return {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(path.encode()).hexdigest()}

    def children(self, files: dict[str, bytes], folder: str, recursive: bool) -> list[str]:
        prefix = f"{folder}/" if folder else ""
        found = set()
        for path in files:
            if path.startswith(prefix):
                parts = path[len(prefix) :].split("/")
                found |= {prefix + "/".join(parts[: i + 1]) for i in range(len(parts) if recursive else 1)}
        return sorted(found)

    def tree(self, request, head, repo, commit, file=None, query=None, **_):
        files = commit[1]
        folder = (file or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        if folder and folder not in files and not any(p.startswith(folder + "/") for p in files):
            return self.reply(request, 404, {"error": "Entry not found"}, head, "EntryNotFound")
        self.reply(request, 200, [self.entry(files, p) for p in self.children(files, folder, recursive)], head)

    def paths_info(self, request, head, repo, commit, body=b"", **_):
        files = commit[1]
        form = parse_qs(body.decode())
        paths = form.get("paths") or (json.loads(body).get("paths", []) if body.startswith(b"{") else [])
        known = [p for p in paths if p in files or any(f.startswith(p.rstrip("/") + "/") for f in files)]
        self.reply(request, 200, [self.entry(files, p) for p in known], head)

    def info(self, request, head, repo, commit, **_):
        sha, files = commit
        siblings = [{"rfilename": p, "size": len(d)} for p, d in sorted(files.items())]
        payload = {"id": repo, "_id": repo, "sha": sha, "private": False, "gated": False, "disabled": False}
        self.reply(request, 200, {**payload, "siblings": siblings, "tags": [], "downloads": 0}, head)
