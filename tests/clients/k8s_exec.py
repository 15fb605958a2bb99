"""Runs one exec through the official Kubernetes Python client against
ws-subprocess, as `kubectl exec` would against a cluster.

Usage: k8s_exec.py HOST_URL TOKEN; prints a JSON summary.
"""

import json
import sys

from kubernetes import client
from kubernetes.stream import stream

host, token = sys.argv[1], sys.argv[2]
configuration = client.Configuration()
configuration.host = host
configuration.api_key = {"authorization": token}
configuration.api_key_prefix = {"authorization": "Bearer"}
api = client.CoreV1Api(client.ApiClient(configuration))

session = stream(
    api.connect_get_namespaced_pod_exec,
    "demo",
    "default",
    command=["chosen", "by", "the", "token"],
    stdin=True,
    stdout=True,
    stderr=True,
    tty=False,
    _preload_content=False,
)
session.write_stdin("hello from the kubernetes client\n")
session.write_stdin(b"and some bytes\n")
session.close_channel(0)  # v5: end of stdin
stdout, stderr = "", ""
session.run_forever(timeout=20)
stdout += session.read_stdout() or ""
stderr += session.read_stderr() or ""
print(json.dumps({
    "protocol": session.subprotocol,
    "stdout": stdout,
    "stderr": stderr,
    "returncode": session.returncode,
}))
