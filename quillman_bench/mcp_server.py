"""A small MCP server for the tests and the MCP overhead bench (the ``mcp`` SDK's MCPServer, the
successor of FastMCP): two useful tools and three that misbehave on purpose.

    python -m quillman_bench.mcp_server --port 8931            # streamable HTTP at /mcp
    python -m quillman_bench.mcp_server --port 8931 --sse      # SSE only, at /sse

``--redirect-to URL``: instead, answer every request with a 307 to URL (the access tests).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from mcp.server.mcpserver import Context  # resolved by name in the tools' annotations

WEATHER = {"paris": "sunny and 18 degrees", "london": "rainy and 11 degrees", "tokyo": "cloudy and 22 degrees"}


def build_server():
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("quillman-test-tools")

    @server.tool()
    def get_weather(city: str) -> str:
        """Get the current weather for a city."""
        sky = WEATHER.get(city.strip().lower(), "windy and 15 degrees")
        return f"The weather in {city} is {sky}."

    @server.tool()
    def get_population(city: str) -> str:
        """Get the number of people who live in a city."""
        return f"About 2 million people live in {city}."

    @server.tool()
    def broken_weather(city: str) -> str:
        """Get the weather for a city from a station that is offline."""
        raise ValueError(f"the weather station for {city} is offline")

    @server.tool()
    async def slow_weather(city: str) -> str:
        """Get the weather for a city, very slowly."""
        await asyncio.sleep(3600)
        return "too late"

    @server.tool()
    def huge_weather(city: str) -> str:
        """Get a very long weather report for a city."""
        # ~150-250 KB: far over any output cap, under the SDK's 1 MiB limit for one message
        return f"The weather in {city} is sunny. " * 5000

    @server.tool()
    def check_credentials(city: str, ctx: Context) -> str:
        """Check the credentials this request carried (never repeats them)."""
        headers = {k.lower(): v for k, v in (ctx.headers or {}).items()}
        key, bearer = headers.get("x-api-key"), headers.get("authorization", "")
        token = bearer[len("Bearer "):] if bearer.startswith("Bearer ") else None
        if key and token:
            return "credentials: both present, " + ("they match" if key == token else "they differ")
        return f"credentials: api key {'present' if key else 'missing'}, bearer {'present' if token else 'missing'}"

    @server.tool()
    def echo_timing(text: str) -> str:
        """Echo the text (the overhead bench: the tool's own time is about zero)."""
        started = time.perf_counter()
        return f"{text} ({(time.perf_counter() - started) * 1000:.3f} ms)"

    return server


def redirect_app(location: str):
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    async def redirect(request):
        return RedirectResponse(location, status_code=307)

    return Starlette(routes=[Route("/{path:path}", redirect, methods=["GET", "POST", "DELETE"])])


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class McpServerProcess:
    """This module run as a process on a free port of 127.0.0.1, until ``stop()``."""

    def __init__(self, *args: str):
        import subprocess
        import sys

        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, "-m", "quillman_bench.mcp_server",
                                         "--port", str(self.port), *args])
        self._wait()

    def _wait(self) -> None:
        import socket

        for _ in range(200):
            if self.process.poll() is not None:
                raise RuntimeError(f"the MCP test server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the MCP test server did not start")

    def url(self, path: str = "/mcp", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sse", action="store_true", help="serve SSE only (at /sse)")
    parser.add_argument("--redirect-to", default=None)
    args = parser.parse_args(argv)
    if args.redirect_to:
        app = redirect_app(args.redirect_to)
    else:
        server = build_server()
        app = server.sse_app() if args.sse else server.streamable_http_app()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
