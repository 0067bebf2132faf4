#!/usr/bin/env python3
"""Download one pinned file from a PyPI-compatible index and check its sha256.

usage: fetch_pypi.py PROJECT FILENAME SHA256 DEST_DIR

The file's address comes from the index's JSON simple API (PEP 691) at $PIP_INDEX_URL
(default https://pypi.org/simple). Standard library only: this runs before any venv exists.
Exits 0 if DEST_DIR/FILENAME already has the right hash.
"""
import hashlib
import json
import os
import sys
import urllib.request


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    project, filename, sha256, dest_dir = sys.argv[1:]
    dest = os.path.join(dest_dir, filename)
    if os.path.exists(dest) and sha256_of(dest) == sha256:
        return
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    request = urllib.request.Request(
        f"{index}/{project}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    matches = [f for f in files if f["filename"] == filename]
    if not matches:
        sys.exit(f"{filename} is not listed by {index}/{project}/")
    os.makedirs(dest_dir, exist_ok=True)
    partial = dest + ".partial"
    with urllib.request.urlopen(matches[0]["url"], timeout=300) as response, open(partial, "wb") as out:
        while block := response.read(1 << 20):
            out.write(block)
    got = sha256_of(partial)
    if got != sha256:
        os.remove(partial)
        sys.exit(f"{filename}: sha256 {got} does not match the pinned {sha256}")
    os.replace(partial, dest)


if __name__ == "__main__":
    main()
