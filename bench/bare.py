"""The ceiling for bench.admission: a bare aiohttp HTTPS server answering every review allowed.

``python -m bench.bare --port P --cert-file C --key-file K`` serves ``POST /mutate`` (parse the
body with orjson, echo the uid, allow) and ``GET /readyz``, over TLS set up as the webhook's
(webhook.tls.server_context), without an access log, under uvloop, until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import orjson
import uvloop
from aiohttp import web

from webhook.tls import server_context

MAX_BODY_BYTES = 3 * 1024 * 1024  # the webhook's default server.maxBodyBytes


async def mutate(request: web.Request) -> web.Response:
    review = orjson.loads(await request.read())
    answer = {
        "apiVersion": review["apiVersion"],
        "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], "allowed": True},
    }
    return web.Response(body=orjson.dumps(answer), content_type="application/json")


async def readyz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def serve(port: int, cert_file: str, key_file: str) -> None:
    context = server_context()
    context.load_cert_chain(cert_file, key_file)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert-file", required=True)
    parser.add_argument("--key-file", required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.cert_file, args.key_file))


if __name__ == "__main__":
    main()
