"""Times the platform's answer to hostile prompts that are one huge pre-token (the BPE merge
loop's worst case) through the Python bindings.

    SORAMAI_TEST_MODEL=… "$(./scripts/python-bindings.sh)" benches/hostile_prompt.py
"""

import os
import tempfile
import time

import soramai

data = tempfile.mkdtemp()
platform = soramai.Platform(data, model=os.environ["SORAMAI_TEST_MODEL"])
admin = platform.session(platform.bootstrap())
admin.create_tenant("acme", "basic")
admin.grant_credits("acme", 10**6, "bench")
session = platform.session(admin.create_api_key("bench", ["inference"], tenant="acme")["key"])
session.complete(soramai.DEFAULT_MODEL_ID, "warm", max_tokens=1)
for label, text in (("50,000 x", "x" * 50_000), ("9,000 'hello '", "hello " * 9000)):
    started = time.monotonic()
    try:
        session.complete(soramai.DEFAULT_MODEL_ID, text, max_tokens=1)
    except soramai.ContextLengthError as e:
        outcome = e.code
    else:
        outcome = "ok"
    print(f"{label:>16}: {(time.monotonic() - started) * 1000:9.1f} ms ({outcome})")
platform.close()
