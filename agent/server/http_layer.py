"""aiohttp's own answers, below the application: a request that is not valid HTTP/1.1 (a bad
request line, an over-long header, a bad chunk) and a failure that escaped every middleware.

aiohttp answers those in plain text and logs each with a traceback ("Error handling request"),
so a client that sends garbage fills the log with tracebacks of the agent's own code. Here they
are answered with docs/protocol.md's JSON error body (`BAD_HTTP_REQUEST`, `INTERNAL`, ...) and
logged in one line with their code; only a failure of the agent itself keeps its traceback.

aiohttp has no public hook for this: `RequestHandler.handle_error` is the method that builds
those answers, and the runner's `Server` makes one `RequestHandler` per connection.
`JsonErrorsAppRunner` makes the server use a subclass (tests/agent/server/test_http_layer.py
pins the behaviour, so an aiohttp that changes it fails there first).
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_request import BaseRequest

from agent.log_fields import log_fields
from protocol.errors import BadHttpRequest, ErrorBody, InternalError

log = logging.getLogger(__name__)

BAD_HTTP_REQUEST = BadHttpRequest.code
INTERNAL = InternalError.code


def layer_code(status: int) -> str:
    """The code of an answer of the HTTP layer with `status`."""
    if status == HTTPStatus.BAD_REQUEST:
        return BAD_HTTP_REQUEST
    if status == HTTPStatus.INTERNAL_SERVER_ERROR:
        return INTERNAL
    try:
        return HTTPStatus(status).name
    except ValueError:
        return f"HTTP_{status}"


class JsonErrorsRequestHandler(web.RequestHandler):
    """One connection's protocol, whose own error answers are JSON and logged in one line."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        code = layer_code(status)
        if status >= 500:
            log.error(
                "%s %s from %s failed inside the agent",
                request.method,
                request.path,
                request.remote,
                exc_info=exc,
                extra=log_fields(code=code, remote=request.remote),
            )
            text = "the agent failed to handle this request; it is logged"
        else:
            text = _first_line(exc, message) or HTTPStatus(status).phrase
            log.warning(
                "refused a request from %s that is not valid HTTP/1.1 (%d %s): %s",
                request.remote,
                status,
                code,
                text,
                extra=log_fields(code=code, status=status, remote=request.remote),
            )
        if request.writer.output_size > 0:
            # Part of an answer is out already: nothing more can be said (as aiohttp does).
            raise ConnectionError("an answer was already being sent; the connection is closed")
        response = web.json_response(ErrorBody(code, text).to_json(), status=status)
        response.force_close()
        return response


class JsonErrorsServer(web.Server):
    """A low-level server whose connections are JsonErrorsRequestHandler."""

    def __call__(self) -> web.RequestHandler:
        return JsonErrorsRequestHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorsAppRunner(web.AppRunner):
    """`web.AppRunner` whose server answers its own errors as JSON (see the module docstring)."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return JsonErrorsServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )


def _first_line(exc: BaseException | None, message: str | None) -> str:
    # aiohttp's parser errors carry a `message`; their str() adds a status and repeats it.
    text = getattr(exc, "message", None) or message or (str(exc) if exc else "")
    return str(text).strip().splitlines()[0] if str(text).strip() else ""
