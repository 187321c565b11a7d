"""Drive demo traffic through ``kmeter dev``'s proxy and show what kmeter metered.

Three customers call the OpenAI-style upstream (``examples/openai-upstream/server.py``) through
the metering proxy, identified by the ``X-Customer-Id`` header, with both models, half of the
calls streamed (Server-Sent Events, usage in the last chunk):

* ``acme`` — a paying customer (the free-tier Quota gives it an override), small requests;
* ``globex`` — a free-tier customer with small requests, well under the limit;
* ``initech`` — a free-tier customer with large requests: it exhausts the 2,000 tokens of the
  day within a few requests and is then refused with HTTP 429 by the proxy.

Then it asks the usage API for the tokens and requests per customer and model, and prints them
beside what the client itself saw in the responses' ``usage`` — the two columns agree — and
the first 429 it got. Standard library only.

    python examples/traffic.py --proxy http://127.0.0.1:8000 --api http://127.0.0.1:8888
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

CUSTOMERS = {"acme": 24, "globex": 12, "initech": 400}
"""Customer → max_tokens of its requests."""
MODELS = ("gpt-4o", "gpt-4o-mini")


@dataclass
class Seen:
    """What the client saw, per (customer, model)."""

    tokens: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    ok: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    refused: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    first_refusal: tuple[str, int, dict[str, str], str] | None = None


def _usage_of_stream(body: bytes) -> dict[str, Any] | None:
    usage = None
    for line in body.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            chunk = json.loads(line[len("data: ") :])
            usage = chunk.get("usage") or usage
    return usage


def call(proxy: str, customer: str, model: str, stream: bool, seen: Seen) -> None:
    body = {
        "model": model,
        "max_tokens": CUSTOMERS[customer],
        "stream": stream,
        "messages": [{"role": "user", "content": f"Hello from {customer}, tell me a story"}],
    }
    request = urllib.request.Request(
        f"{proxy}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Customer-Id": customer},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
    except urllib.error.HTTPError as error:
        if error.code != 429:
            raise
        seen.refused[customer] += 1
        if seen.first_refusal is None:
            headers = {
                k: v
                for k, v in error.headers.items()
                if k.lower().startswith(("ratelimit", "retry"))
            }
            seen.first_refusal = (customer, error.code, headers, error.read().decode())
        return
    usage = _usage_of_stream(raw) if stream else json.loads(raw)["usage"]
    assert usage is not None, "the stream carried no usage"
    seen.tokens[(customer, model)] += int(usage["total_tokens"])
    seen.ok[(customer, model)] += 1


def query(api: str, meter: str, *group_by: str) -> dict[tuple[str, ...], int]:
    params = "&".join(f"groupBy={name}" for name in group_by)
    with urllib.request.urlopen(f"{api}/api/v1/meters/{meter}/query?{params}", timeout=10) as r:
        rows = json.loads(r.read())["data"]
    found: dict[tuple[str, ...], int] = {}
    for row in rows:
        key = tuple(
            str(row["subject"] if name == "subject" else row["groupBy"][name]) for name in group_by
        )
        found[key] = int(row["value"])
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description="Demo traffic through kmeter dev.")
    parser.add_argument("--proxy", default="http://127.0.0.1:8000")
    parser.add_argument("--api", default="http://127.0.0.1:8888")
    parser.add_argument("--rounds", type=int, default=12, help="requests per customer")
    args = parser.parse_args()

    seen = Seen()
    for round_number in range(args.rounds):
        for customer in CUSTOMERS:
            model = MODELS[round_number % 2]
            call(args.proxy, customer, model, stream=round_number % 4 >= 2, seen=seen)

    # The proxy hands its events over off the request path: wait until the meter caught up.
    deadline = time.monotonic() + 15
    tokens: dict[tuple[str, ...], int] = {}
    while time.monotonic() < deadline:
        tokens = query(args.api, "llm-tokens", "subject", "model")
        if all(tokens.get(key, 0) >= value for key, value in seen.tokens.items()):
            break
        time.sleep(0.2)
    requests = query(args.api, "llm-requests", "subject", "model", "status")

    print(f"\nUsage per customer, from the usage API ({args.api}):\n")
    header = (
        f"{'customer':<10} {'model':<12} {'requests':>8} "
        f"{'tokens (client saw)':>20} {'tokens (kmeter)':>16}"
    )
    print(header)
    print("-" * len(header))
    for customer in CUSTOMERS:
        for model in MODELS:
            served = requests.get((customer, model, "200"), 0)
            client = seen.tokens.get((customer, model), 0)
            metered = tokens.get((customer, model), 0)
            print(f"{customer:<10} {model:<12} {served:>8} {client:>20} {metered:>16}")
    agree = all(tokens.get(key, 0) == value for key, value in seen.tokens.items())
    print(f"\nkmeter's totals {'match' if agree else 'DO NOT match'} what the client saw.")
    if seen.first_refusal is None:
        print("No request was refused (is a Quota with enforcement: Block loaded?).")
    else:
        customer, status, headers, body = seen.first_refusal
        refused = seen.refused[customer]
        print(f"\n{customer} went over the free tier: {refused} requests refused, the first with")
        print(f"  HTTP {status}")
        for name, value in headers.items():
            print(f"  {name}: {value}")
        print(f"  {body}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
