"""A stand-in for an OpenAI-style LLM API, to meter with ``kmeter dev`` (no API key, no network).

``POST /v1/chat/completions`` takes OpenAI's request body (``model``, ``messages``,
optionally ``max_tokens`` and ``stream``) and answers in OpenAI's shapes:

* without ``stream``: a ``chat.completion`` JSON object whose ``usage`` holds
  ``prompt_tokens``, ``completion_tokens`` and ``total_tokens``;
* with ``"stream": true``: ``text/event-stream`` — one ``chat.completion.chunk`` per word of
  the reply, then (as OpenAI does with ``stream_options.include_usage``) a last chunk with no
  choices and the ``usage``, then ``data: [DONE]``.

Token counts are deterministic so that a client can check the meter: the prompt costs one token
per word of the messages' contents, the reply is ``max_tokens`` words (default 16, at most 512).
``GET /v1/models`` lists the models; ``GET /healthz`` answers ``ok``.

Run: ``python examples/openai-upstream/server.py --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from typing import Any

from aiohttp import web

MODELS = ("gpt-4o", "gpt-4o-mini")
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "and",
    "keeps",
    "on",
    "running",
]
_ids = itertools.count(1)


def _problem(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error"}}
    return web.json_response(body, status=status)


def _prompt_tokens(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    return sum(
        len(str(message.get("content", "")).split())
        for message in messages
        if isinstance(message, dict)
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _problem(400, "the body is not JSON")
    if not isinstance(body, dict):
        return _problem(400, "the body must be a JSON object")
    model = body.get("model")
    if model not in MODELS:
        return _problem(404, f"model {model!r} does not exist; try one of {', '.join(MODELS)}")
    max_tokens = body.get("max_tokens", 16)
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= 512:
        return _problem(400, "max_tokens must be an integer from 1 to 512")
    reply = [WORDS[i % len(WORDS)] for i in range(max_tokens)]
    prompt = _prompt_tokens(body.get("messages"))
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": len(reply),
        "total_tokens": prompt + len(reply),
    }
    ident = f"chatcmpl-{next(_ids)}"
    created = int(time.time())
    if not body.get("stream"):
        return web.json_response(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " ".join(reply)},
                        "finish_reason": "length",
                    }
                ],
                "usage": usage,
            }
        )
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)

    async def send(chunk: dict[str, Any] | str) -> None:
        data = chunk if isinstance(chunk, str) else json.dumps(chunk)
        await response.write(f"data: {data}\n\n".encode())

    base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
    for index, word in enumerate(reply):
        delta = {"content": word if index == 0 else " " + word}
        if index == 0:
            delta["role"] = "assistant"
        await send({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        await asyncio.sleep(0)
    await send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    await send({**base, "choices": [], "usage": usage})
    await send("[DONE]")
    await response.write_eof()
    return response


async def models(_: web.Request) -> web.Response:
    return web.json_response(
        {"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]}
    )


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def application() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    web.run_app(application(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
