"""A Starlette app (ASGI) served unchanged by the tests and the benchmark, with a lifespan that
the tests can see (``/state``)."""

import asyncio
import contextlib
import hashlib
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"started_by": os.getpid()}


async def hello(request: Request):
    return PlainTextResponse("Hello, World!")


async def json_view(request: Request):
    return JSONResponse({"pid": os.getpid(), "args": dict(request.query_params)})


async def state(request: Request):
    return JSONResponse({"started_by": request.state.started_by, "pid": os.getpid()})


async def echo(request: Request):
    data = b""
    async for chunk in request.stream():
        data += chunk
    return Response(data, headers={"X-Length": str(len(data)), "X-Sha1": hashlib.sha1(data).hexdigest()})


async def stream(request: Request):
    n = int(request.query_params.get("n", "5"))

    async def gen():
        for i in range(n):
            yield f"chunk {i}\n"

    return StreamingResponse(gen(), media_type="text/plain")


async def sleep(request: Request):
    await asyncio.sleep(float(request.query_params.get("s", "0.2")))
    return PlainTextResponse("slept")


async def pid(request: Request):
    return PlainTextResponse(str(os.getpid()))


async def big(request: Request):
    return Response(b"x" * int(request.query_params.get("n", str(1 << 20))))


app = Starlette(
    routes=[
        Route("/", hello),
        Route("/json", json_view),
        Route("/state", state),
        Route("/echo", echo, methods=["POST", "PUT"]),
        Route("/stream", stream),
        Route("/sleep", sleep),
        Route("/big", big),
        Route("/pid", pid),
    ],
    lifespan=lifespan,
)
