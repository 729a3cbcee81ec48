"""HTTP answers read with a size cap.

A server that answers with an endless or enormous body (a broken upstream, a hostile tool
server, a model endpoint stuck in a loop) would otherwise be read into memory whole. Every
client here (role endpoints and judges, the tool client, the tool server's upstream) reads
answers through these functions: the declared length is checked first, then the decoded bytes
as they arrive, and reading stops at the cap.
"""

from __future__ import annotations

import httpx

#: The default cap on one answer's decoded body (model answers and tool answers alike are
#: far smaller; a ToolBench observation is cut to 2,048 characters).
MAX_BODY_BYTES = 16 * 2**20

# The body handed on is already decoded and complete: these would describe another body.
_BODY_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


class BodyTooLarge(httpx.HTTPError):
    """An answer whose body exceeds the cap (nothing beyond the cap was read)."""


def _declared_too_large(response: httpx.Response, cap: int, where: str) -> None:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap and "content-encoding" not in response.headers:
        raise BodyTooLarge(f"{where}: the answer declares {int(declared):,} bytes (cap {cap:,})")


def _too_large(cap: int, where: str) -> BodyTooLarge:
    return BodyTooLarge(f"{where}: the answer exceeds {cap:,} bytes; reading stopped there")


def _complete(streamed: httpx.Response, body: bytes) -> httpx.Response:
    headers = [(k, v) for k, v in streamed.headers.multi_items() if k not in _BODY_HEADERS]
    return httpx.Response(
        streamed.status_code, headers=headers, content=body, request=streamed.request
    )


def request(
    client: httpx.Client, method: str, url: str, *, cap: int = MAX_BODY_BYTES, **kwargs
) -> httpx.Response:
    """``client.request(method, url, **kwargs)``, its body read whole unless it exceeds
    ``cap`` bytes (then ``BodyTooLarge``)."""
    where = f"{method} {client.base_url.join(url)}"
    with client.stream(method, url, **kwargs) as streamed:
        _declared_too_large(streamed, cap, where)
        body = bytearray()
        for chunk in streamed.iter_bytes():
            body += chunk
            if len(body) > cap:
                raise _too_large(cap, where)
    return _complete(streamed, bytes(body))


async def arequest(
    client: httpx.AsyncClient, method: str, url: str, *, cap: int = MAX_BODY_BYTES, **kwargs
) -> httpx.Response:
    """The ``httpx.AsyncClient`` form of :func:`request`."""
    where = f"{method} {client.base_url.join(url)}"
    async with client.stream(method, url, **kwargs) as streamed:
        _declared_too_large(streamed, cap, where)
        body = bytearray()
        async for chunk in streamed.aiter_bytes():
            body += chunk
            if len(body) > cap:
                raise _too_large(cap, where)
    return _complete(streamed, bytes(body))
