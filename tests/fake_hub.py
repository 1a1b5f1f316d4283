"""A local stand-in for the Hugging Face Hub HTTP API, for testing `spunge push` with no network.

It implements the endpoints that `huggingface_hub` (2.x) calls for `create_repo`, `create_branch`,
`list_repo_files`, `create_commit` (README validation, preupload, the LFS batch/upload/verify
protocol and the ndjson commit, including `create_pr`), with tokens, namespaces and branches,
and records every request so tests can assert what the client sent. The Xet upload protocol is
not implemented: run the client with `HF_HUB_DISABLE_XET=1` so large files go through LFS.

Behaviour follows the real Hub where the client depends on it: 401 for an unknown token, 403 for
a namespace the token's user cannot write, 409 for an existing repo or branch, `X-Error-Code`
headers for missing repos/revisions/entries, and a commit that references an LFS object nobody
uploaded is rejected (so a test sees whether the LFS upload happened).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".png", ".gguf")
LFS_SIZE = 10 * 1000**2
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def ndjson(self) -> list[dict]:
        return [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]


@dataclass
class StoredFile:
    data: bytes
    lfs: bool

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "path": path, "size": len(self.data), "oid": git_blob_sha1(self.data)}
        if self.lfs:
            entry["lfs"] = {"oid": hashlib.sha256(self.data).hexdigest(), "size": len(self.data), "pointerSize": 134}
        return entry


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, dict[str, StoredFile]] = field(default_factory=dict)
    pull_requests: list[dict] = field(default_factory=list)


@dataclass
class Commit:
    repo_id: str
    revision: str  # the branch (or refs/pr/N) that received it
    create_pr: bool
    summary: str
    description: str
    added: dict[str, StoredFile]
    deleted: list[str]
    oid: str


class FakeHub:
    """Start with `with FakeHub(tokens={"hf_x": "alice"}) as hub:` and point HF_ENDPOINT at `hub.url`."""

    def __init__(self, tokens: dict[str, str] | None = None, orgs: dict[str, set[str]] | None = None):
        self.tokens = dict(tokens or {})  # token -> user name
        self.orgs = {user: set(names) for user, names in (orgs or {}).items()}  # user -> orgs it can write
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> bytes
        self.commits: list[Commit] = []
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None, "start the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- helpers for tests

    def add_repo(self, repo_id: str, files: dict[str, bytes] | None = None, private: bool = False) -> Repo:
        """A repo that already exists (e.g. owned by someone else, or pushed before)."""
        repo = Repo(repo_id, private, branches={"main": {".gitattributes": StoredFile(GITATTRIBUTES, False)}})
        for path, data in (files or {}).items():
            lfs = path.endswith(LFS_SUFFIXES)
            repo.branches["main"][path] = StoredFile(data, lfs)
            if lfs:
                self.lfs_objects[hashlib.sha256(data).hexdigest()] = data
        self.repos[repo_id] = repo
        return repo

    def requests_to(self, pattern: str, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if re.search(pattern, r.path) and (method is None or r.method == method)]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return {path: stored.data for path, stored in self.repos[repo_id].branches[revision].items()}


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES: list[tuple[str, re.Pattern, str]] = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/branch/(?P<branch>[^/]+)$"), "create_branch"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?$"), "tree"),
    ("GET", re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "repo_info"),
    ("POST", re.compile(rf"^/{_REPO}\.git/info/lfs/objects/batch$"), "lfs_batch"),
    ("PUT", re.compile(r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$"), "lfs_upload"),
    ("POST", re.compile(r"^/lfs-verify$"), "lfs_verify"),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub

    def log_message(self, *args) -> None:  # keep test output clean
        return

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        request = Request(method, split.path, parse_qs(split.query), {k.lower(): v for k, v in self.headers.items()},
                          self._read_body())
        hub = self.fake
        with hub._lock:
            hub.requests.append(request)
        try:
            for route_method, pattern, name in _ROUTES:
                match = pattern.match(split.path)
                if match and route_method == method:
                    params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    with hub._lock:
                        status, payload, headers = getattr(self, f"_{name}")(request, **params)
                    break
            else:
                raise _HubError(404, f"fake hub: no route for {method} {split.path}")
        except _HubError as err:
            status, payload = err.status, {"error": err.message, **err.extra}
            headers = {"X-Error-Message": err.message, **({"X-Error-Code": err.code} if err.code else {})}
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    # ---------------------------------------------------------------- auth

    def _user(self, request: Request) -> str:
        auth = request.headers.get("authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        if token not in self.fake.tokens:
            raise _HubError(401, "Invalid credentials in Authorization header")
        return self.fake.tokens[token]

    def _can_write(self, user: str, repo_id: str) -> bool:
        owner = repo_id.split("/")[0]
        return owner == user or owner in self.fake.orgs.get(user, set())

    def _writable_repo(self, request: Request, repo_id: str, *, pr_allowed: bool = False) -> Repo:
        """The repo, if the token's user may write to it; anyone who can read it may open a pull request."""
        user = self._user(request)
        repo = self.fake.repos.get(repo_id)
        if repo is None or (repo.private and not self._can_write(user, repo_id)):
            raise _HubError(404, "Repository not found", "RepoNotFound")
        if not self._can_write(user, repo_id) and not (pr_allowed and request.query.get("create_pr") == ["1"]):
            raise _HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    # ---------------------------------------------------------------- endpoints

    def _create_repo(self, request: Request):
        user = self._user(request)
        payload = request.json()
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        if not self._can_write(user, repo_id):
            raise _HubError(403, f"You don't have the rights to create a model under the namespace \"{repo_id.split('/')[0]}\"")
        if repo_id in self.fake.repos:
            raise _HubError(409, "You already created this model repo", url=f"{self.fake.url}/{repo_id}")
        self.fake.add_repo(repo_id, private=payload.get("visibility") == "private")
        return 200, {"url": f"{self.fake.url}/{repo_id}", "name": repo_id, "id": repo_id}, {}

    def _repo_info(self, request: Request, repo: str, rev: str = "main"):
        self._user(request)
        found = self.fake.repos.get(repo)
        if found is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        if rev not in found.branches:
            raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return 200, {"id": repo, "private": found.private, "sha": "0" * 40,
                     "siblings": [{"rfilename": p} for p in found.branches[rev]]}, {}

    def _validate_yaml(self, request: Request):
        content = request.json().get("content", "")
        match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []}, {}
        if not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _branch_files(self, repo: Repo, rev: str) -> dict[str, StoredFile]:
        if rev not in repo.branches:
            raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo.branches[rev]

    def _preupload(self, request: Request, repo: str, rev: str):
        found = self._writable_repo(request, repo, pr_allowed=True)
        existing = found.branches.get(rev, found.branches["main"])
        answers = []
        for item in request.json()["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["size"] > LFS_SIZE or b"\0" in sample or item["path"].endswith(LFS_SUFFIXES)
            stored = existing.get(item["path"])
            oid = None
            if stored is not None:
                oid = hashlib.sha256(stored.data).hexdigest() if stored.lfs else git_blob_sha1(stored.data)
            answers.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return 200, {"files": answers, "commitOid": "0" * 40}, {}

    def _lfs_batch(self, request: Request, repo: str):
        user = self._user(request)
        found = self.fake.repos.get(repo)
        if found is None or (found.private and not self._can_write(user, repo)):
            raise _HubError(404, "Repository not found", "RepoNotFound")
        if request.json().get("ref") is not None and not self._can_write(user, repo):  # no ref: blobs for a pull request
            raise _HubError(403, f"You don't have the rights to write to {repo}")
        payload = request.json()
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.fake.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.fake.url}/lfs-upload/{obj['oid']}"},
                                    "verify": {"href": f"{self.fake.url}/lfs-verify"}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {}

    def _lfs_upload(self, request: Request, oid: str):
        if hashlib.sha256(request.body).hexdigest() != oid:
            raise _HubError(400, "uploaded content does not match its sha256")
        self.fake.lfs_objects[oid] = request.body
        return 200, {}, {}

    def _lfs_verify(self, request: Request):
        self._user(request)
        payload = request.json()
        data = self.fake.lfs_objects.get(payload["oid"])
        if data is None or len(data) != payload["size"]:
            raise _HubError(404, "LFS object not found")
        return 200, {"message": "Everything looks good."}, {}

    def _create_branch(self, request: Request, repo: str, branch: str):
        found = self._writable_repo(request, repo)
        if branch.startswith("refs/"):
            raise _HubError(400, f"Invalid reference for a branch: {branch}")
        if branch in found.branches:
            raise _HubError(409, f"Branch {branch} already exists")
        start = (request.json() if request.body else {}).get("startingPoint") or "main"
        found.branches[branch] = dict(self._branch_files(found, start))
        return 200, {}, {}

    def _tree(self, request: Request, repo: str, rev: str, sub: str = ""):
        self._user(request)
        found = self.fake.repos.get(repo)
        if found is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        files = self._branch_files(found, rev)
        return 200, [stored.tree_entry(path) for path, stored in sorted(files.items()) if path.startswith(sub)], {}

    def _commit(self, request: Request, repo: str, rev: str):
        found = self._writable_repo(request, repo, pr_allowed=True)
        base = dict(self._branch_files(found, rev))
        lines = request.ndjson()
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "commit payload must start with a header")
        header = lines[0]["value"]
        added: dict[str, StoredFile] = {}
        deleted: list[str] = []
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                added[value["path"]] = StoredFile(base64.b64decode(value["content"]), False)
            elif line["key"] == "lfsFile":
                data = self.fake.lfs_objects.get(value["oid"])
                if data is None:
                    raise _HubError(400, f"Your push was rejected because an LFS pointer ({value['path']}) points to a "
                                         "file that does not exist")
                added[value["path"]] = StoredFile(data, True)
            elif line["key"] == "deletedFile":
                if value["path"] not in base:
                    raise _HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                deleted.append(value["path"])
            else:
                raise _HubError(400, f"fake hub: unsupported commit operation {line['key']}")
        new_files = {p: f for p, f in base.items() if p not in deleted}
        new_files.update(added)
        oid = hashlib.sha1(f"{repo}:{len(self.fake.commits)}".encode()).hexdigest()
        create_pr = request.query.get("create_pr") == ["1"]
        pr_url = None
        target = rev
        if create_pr:
            number = len(found.pull_requests) + 1
            target = f"refs/pr/{number}"
            found.pull_requests.append({"num": number, "target": rev, "title": header["summary"]})
            pr_url = f"{self.fake.url}/{repo}/discussions/{number}"
        found.branches[target] = new_files
        self.fake.commits.append(Commit(repo, target, create_pr, header["summary"], header.get("description", ""),
                                        added, deleted, oid))
        return 200, {"commitUrl": f"{self.fake.url}/{repo}/commit/{oid}", "commitOid": oid,
                     "pullRequestUrl": pr_url, "success": True}, {}
