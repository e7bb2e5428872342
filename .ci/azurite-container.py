#!/usr/bin/env python3
"""Create a container in Azurite with a Shared-Key-signed request.

Usage: azurite-container.py PORT CONTAINER [ACCOUNT KEY]
(ACCOUNT and KEY default to the emulator's public, well-known credentials.)
Exit 0 when the container was created or already exists.
"""
import base64, hashlib, hmac, http.client, sys
from email.utils import formatdate
WELL_KNOWN = (
    "devstoreaccount1",
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
)
port, container = sys.argv[1:3]
account, key = sys.argv[3:5] if len(sys.argv) >= 5 else WELL_KNOWN
date, version = formatdate(usegmt=True), "2021-10-04"
resource = f"/{account}/{account}/{container}\nrestype:container"
to_sign = "PUT\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:{version}\n" + resource
sig = base64.b64encode(
    hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()
).decode()
conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
conn.request(
    "PUT",
    f"/{account}/{container}?restype=container",
    body=b"",
    headers={
        "x-ms-date": date,
        "x-ms-version": version,
        "Authorization": f"SharedKey {account}:{sig}",
    },
)
status = conn.getresponse().status
if status not in (201, 409):
    sys.exit(f"creating container {container}: HTTP {status}")
