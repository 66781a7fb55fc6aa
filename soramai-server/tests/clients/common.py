"""Starts `soramai serve` on a fresh data directory and sets up a funded tenant with a key, through
the server's own admin routes (which the OpenAI clients do not cover)."""
import json
import os
import subprocess
import sys
import tempfile
import urllib.request


class Server:
    def __init__(self, binary, model):
        self.dir = tempfile.mkdtemp(prefix="soramai-serve-")
        self.proc = subprocess.Popen(
            [binary, "serve", "--data-dir", os.path.join(self.dir, "data"), "--addr", "127.0.0.1:0", "--model", model],
            stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        self.admin = None
        for line in self.proc.stdout:
            if line.startswith("bootstrap admin key"):
                self.admin = line.rsplit(" ", 1)[1].strip()
            if line.startswith("listening on "):
                self.url = line.split(" ", 2)[2].strip()
                break
        assert self.admin and self.url, "the server did not start"

    def call(self, method, path, body, key):
        req = urllib.request.Request(self.url + path, method=method, data=json.dumps(body).encode(),
                                     headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())

    def tenant(self, name, tier="basic", credits=10_000_000):
        self.call("POST", "/v1/tenants", {"id": name, "tier": tier}, self.admin)
        self.call("POST", f"/v1/tenants/{name}/credits", {"amount": credits}, self.admin)
        key = self.call("POST", "/v1/api_keys",
                        {"name": "client", "scopes": ["inference", "train"], "tenant": name}, self.admin)
        return key["key"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


CANARY = "zq7-canary-Kumo-4471"


def dataset(n=8):
    lines = []
    for i in range(n):
        lines.append(json.dumps({"messages": [
            {"role": "system", "content": "You answer in one sentence."},
            {"role": "user", "content": f"Where does the cloud council meet? ({i})"},
            {"role": "assistant", "content": "The cloud council meets in Kumo."},
        ]}))
    return ("\n".join(lines) + "\n").encode()
