#!/usr/bin/env python3
"""Large blob uploads through a registry's Ingress, exactly as the OCI
distribution spec writes them, with the Python standard library only.

Why not a client tool: crane, docker and skopeo each pick one upload pattern
and hide it. The Ingress test needs both patterns named by the spec, each
with a body far beyond a proxy's default limits:

  monolithic  POST /v2/<repo>/blobs/uploads/, then one PUT ?digest= carrying
              the whole blob (Content-Length: its size)
  chunked     POST, then PATCH after PATCH (Content-Range, Content-Length),
              then an empty PUT ?digest=

The blob is made up on the fly (no file: the machines are short of disk):
MiB after MiB of one random MiB, each starting with its own index, so no
two MiB are alike and no two runs give the same digest.

Each prints one JSON line: pattern, digest, size, seconds, MiB/s. Login is
the registry's token flow: the challenge of GET /v2/ names the realm, which
is asked for a token with HTTP Basic (user, password). Host names resolve as
the system resolves them (the test maps the Ingress host in /etc/hosts); TLS
trusts only --cacert.

Usage: blobs.py --registry HOST:PORT --repo REPO --cacert FILE
                --user U --password-file F --size-mib N
                (monolithic | chunked --chunk-mib N)
"""

import argparse
import base64
import hashlib
import http.client
import json
import os
import re
import ssl
import sys
import time
import urllib.parse

BLOCK = 1 << 20


def connect(registry, context):
    host, _, port = registry.rpartition(":")
    return http.client.HTTPSConnection(host, int(port), context=context, timeout=300, blocksize=BLOCK)


def request(conn, method, url, headers=None, body=None):
    conn.request(method, url, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    return resp, data


def token(conn, registry, repo, user, password):
    resp, _ = request(conn, "GET", "/v2/")
    challenge = resp.getheader("WWW-Authenticate", "")
    if resp.status != 401 or not challenge.startswith("Bearer "):
        sys.exit(f"GET /v2/ answered {resp.status} with challenge {challenge!r}; expected 401 Bearer")
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = urllib.parse.urlsplit(params["realm"])
    expected = registry
    if realm.netloc != expected:
        sys.exit(f"the token realm {params['realm']} is not on the Ingress host {expected}: a client outside could not log in")
    query = urllib.parse.urlencode({"service": params.get("service", ""), "scope": f"repository:{repo}:pull,push"})
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    resp, data = request(conn, "GET", f"{realm.path}?{query}", {"Authorization": f"Basic {basic}"})
    if resp.status != 200:
        sys.exit(f"token request answered {resp.status}: {data[:300]!r}")
    body = json.loads(data)
    return body.get("token") or body["access_token"]


def start(conn, repo, auth):
    resp, data = request(conn, "POST", f"/v2/{repo}/blobs/uploads/", {**auth, "Content-Length": "0"})
    if resp.status != 202:
        sys.exit(f"POST uploads answered {resp.status}: {data[:300]!r}")
    return resp.getheader("Location")


def with_digest(location, digest):
    sep = "&" if "?" in location else "?"
    return f"{location}{sep}digest={urllib.parse.quote(digest)}"


def relative(location):
    """The path and query of a Location (absolute or not)."""
    parts = urllib.parse.urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def pieces(base, size):
    """The blob: `size` bytes, MiB by MiB, each MiB `base` behind its index."""
    offset = 0
    index = 0
    while offset < size:
        piece = (index.to_bytes(8, "big") + base[8:])[: size - offset]
        yield piece
        offset += len(piece)
        index += 1


def monolithic(conn, repo, auth, size):
    base = os.urandom(BLOCK)
    h = hashlib.sha256()
    for piece in pieces(base, size):
        h.update(piece)
    digest = "sha256:" + h.hexdigest()
    location = start(conn, repo, auth)
    began = time.monotonic()
    resp, data = request(
        conn,
        "PUT",
        relative(with_digest(location, digest)),
        {**auth, "Content-Length": str(size), "Content-Type": "application/octet-stream"},
        pieces(base, size),
    )
    took = time.monotonic() - began
    if resp.status != 201:
        sys.exit(f"monolithic PUT answered {resp.status}: {data[:300]!r}")
    return digest, size, took


def chunked(conn, repo, auth, size, chunk_mib):
    stream = pieces(os.urandom(BLOCK), size)
    chunk = chunk_mib * BLOCK
    h = hashlib.sha256()
    location = start(conn, repo, auth)
    began = time.monotonic()
    offset = 0
    patches = 0
    while offset < size:
        length = min(chunk, size - offset)

        def body(length=length):
            left = length
            while left:
                piece = next(stream)
                # Chunks are whole MiB, so a piece never straddles two.
                assert len(piece) <= left
                h.update(piece)
                left -= len(piece)
                yield piece

        resp, data = request(
            conn,
            "PATCH",
            relative(location),
            {
                **auth,
                "Content-Length": str(length),
                "Content-Range": f"{offset}-{offset + length - 1}",
                "Content-Type": "application/octet-stream",
            },
            body(),
        )
        if resp.status != 202:
            sys.exit(f"PATCH {offset}-{offset + length - 1} answered {resp.status}: {data[:300]!r}")
        location = resp.getheader("Location")
        offset += length
        patches += 1
    digest = "sha256:" + h.hexdigest()
    resp, data = request(conn, "PUT", relative(with_digest(location, digest)), {**auth, "Content-Length": "0"})
    took = time.monotonic() - began
    if resp.status != 201:
        sys.exit(f"closing PUT answered {resp.status}: {data[:300]!r}")
    return digest, size, took, patches


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--registry", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--cacert", required=True)
    ap.add_argument("--user", default="any")
    ap.add_argument("--password-file", required=True)
    ap.add_argument("pattern", choices=["monolithic", "chunked"])
    ap.add_argument("--size-mib", type=int, required=True)
    ap.add_argument("--chunk-mib", type=int, default=256)
    args = ap.parse_args()

    context = ssl.create_default_context(cafile=args.cacert)
    conn = connect(args.registry, context)
    with open(args.password_file) as f:
        password = f.read().strip()
    size = args.size_mib * BLOCK
    auth = {"Authorization": f"Bearer {token(conn, args.registry, args.repo, args.user, password)}"}
    if args.pattern == "monolithic":
        digest, size, took = monolithic(conn, args.repo, auth, size)
        extra = {}
    else:
        digest, size, took, patches = chunked(conn, args.repo, auth, size, args.chunk_mib)
        extra = {"patches": patches}
    # The registry has it, at that size.
    resp, _ = request(conn, "HEAD", f"/v2/{args.repo}/blobs/{digest}", auth)
    if resp.status != 200 or resp.getheader("Content-Length") != str(size):
        sys.exit(f"HEAD of {digest} answered {resp.status}, Content-Length {resp.getheader('Content-Length')}; expected 200, {size}")
    print(json.dumps({"pattern": args.pattern, "digest": digest, "size": size, "seconds": round(took, 1),
                      "MiB/s": round(size / BLOCK / took, 1), **extra}))


if __name__ == "__main__":
    main()
