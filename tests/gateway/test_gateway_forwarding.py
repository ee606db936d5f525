"""Forwarding through a live gateway to a live upstream: faithful requests and responses,
streaming both ways, duplicates answered once, upstream failures as 502/504 problems."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from kit.gateway import GatewayFactory, ManualClock, Upstream, wait_for
from retrysafe.gateway._config import RoutePolicy, Timeouts
from retrysafe.stores.sqlite import SQLiteStore

PROBLEM = "application/problem+json"


def unique(prefix: str) -> str:
    return f"/{prefix}/{uuid.uuid4().hex[:12]}"


def headers_of(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in doc["headers"]]


def names(doc: dict[str, Any]) -> set[str]:
    return {k for k, _ in headers_of(doc)}


def value(doc: dict[str, Any], name: str) -> str | None:
    found = [v for k, v in headers_of(doc) if k == name]
    assert len(found) <= 1, f"{name} sent {len(found)} times: {found}"
    return found[0] if found else None


def test_request_is_forwarded_faithfully(gateway: GatewayFactory) -> None:
    gw = gateway()
    port = gw.url.rsplit(":", 1)[1]
    path = unique("echo") + "/a%2Fb/%7Euser"
    with httpx.Client(base_url=gw.url) as client:
        response = client.request(
            "PUT",
            path + "?b=2&a=1&a=%20x&empty=",
            content=b"\x00binary\xffbody",
            headers={
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "secret-for-this-hop",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Proxy-Authorization": "Basic Zm9vOmJhcg==",
                "X-End-To-End": "kept",
                "X-Forwarded-For": "10.0.0.1",
                "Forwarded": "for=10.0.0.1",
                "Authorization": "Bearer t",
            },
        )
    assert response.status_code == 200
    doc = response.json()
    assert doc["method"] == "PUT"
    assert doc["raw_path"] == path  # %2F is not decoded, nothing re-encoded
    assert doc["query"] == "b=2&a=1&a=%20x&empty="  # order and repeats as sent
    assert doc["body"] == b"\x00binary\xffbody".decode("latin-1")
    # RFC 9110 §7.6.1: hop-by-hop fields, and those the Connection header names, stop here.
    assert not names(doc) & {"connection", "x-hop", "keep-alive", "te", "proxy-authorization"}
    assert value(doc, "x-end-to-end") == "kept"
    assert value(doc, "authorization") == "Bearer t"
    assert value(doc, "x-forwarded-for") == "10.0.0.1, 127.0.0.1"
    assert value(doc, "x-forwarded-proto") == "http"
    assert value(doc, "x-forwarded-host") == f"127.0.0.1:{port}"
    assert value(doc, "forwarded") == (
        f'for=10.0.0.1, for=127.0.0.1;proto=http;host="127.0.0.1:{port}"'
    )
    # The upstream sees its own authority; the client's is in X-Forwarded-Host.
    assert value(doc, "host") == gw.app.config.upstream.removeprefix("http://")
    # A proxy invents no headers of its own (httpx's User-Agent, Accept ...).
    assert "user-agent" not in names(doc) or value(doc, "user-agent") != "python-httpx"


def test_response_status_and_headers_pass_unchanged(gateway: GatewayFactory) -> None:
    gw = gateway()
    with httpx.Client(base_url=gw.url) as client:
        response = client.post("/status/418", headers={"Idempotency-Key": uuid.uuid4().hex})
    assert response.status_code == 418
    assert response.text == "status 418"
    raw = [(k.decode().lower(), v.decode()) for k, v in response.headers.raw]
    assert [v for k, v in raw if k == "set-cookie"] == ["a=1; Path=/", "b=2; Path=/"]
    assert [v for k, v in raw if k == "date"] == ["Mon, 01 Jan 2001 00:00:00 GMT"]
    assert [v for k, v in raw if k == "server"] == ["upstream-test"]
    assert ("x-upstream", "yes") in raw


def test_compressed_bodies_pass_through_compressed(gateway: GatewayFactory) -> None:
    gw = gateway()
    with httpx.Client(base_url=gw.url) as client:
        direct = client.post(gw.app.config.upstream + "/gzip")
        key = {"Idempotency-Key": uuid.uuid4().hex}
        proxied = [client.post("/gzip", headers=key) for _ in range(2)]
    for response in proxied:
        assert response.headers["content-encoding"] == "gzip"
        assert int(response.headers["content-length"]) == int(direct.headers["content-length"])
        assert response.text == "squeezed " * 100
    assert proxied[1].headers.get("idempotent-replayed") == "true"


def test_sequential_duplicates_reach_the_upstream_once(
    gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = gateway()
    path = unique("echo")
    key = {"Idempotency-Key": uuid.uuid4().hex}
    with httpx.Client(base_url=gw.url) as client:
        answers = [client.post(path, content=b"pay 10", headers=key) for _ in range(5)]
        mismatch = client.post(path, content=b"pay 99", headers=key)
        unkeyed = [client.post(path, content=b"pay 10") for _ in range(2)]
    assert upstream.count(path) == 1 + 2  # one keyed execution, two unkeyed
    assert {a.content for a in answers} == {answers[0].content}
    assert [a.headers.get("idempotent-replayed") for a in answers] == [None] + ["true"] * 4
    assert all(len(a.headers.get_list("date")) == 1 for a in [*answers, mismatch])
    assert mismatch.status_code == 422
    assert mismatch.headers["content-type"] == PROBLEM
    assert all(u.status_code == 200 and "idempotent-replayed" not in u.headers for u in unkeyed)


def test_safe_methods_pass_through_even_with_a_key(
    gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = gateway()
    path = unique("echo")
    with httpx.Client(base_url=gw.url) as client:
        for _ in range(2):
            assert client.get(path, headers={"Idempotency-Key": "k"}).status_code == 200
    assert upstream.count(path, "GET") == 2


async def test_response_streams_chunk_by_chunk(gateway: GatewayFactory, upstream: Upstream) -> None:
    """Each chunk reaches the client before the upstream has produced the next one."""
    gw = gateway()
    for keyed in (False, True):
        name = uuid.uuid4().hex
        headers = {"Idempotency-Key": uuid.uuid4().hex} if keyed else {}
        async with (
            httpx.AsyncClient(base_url=upstream.url) as control,
            httpx.AsyncClient(base_url=gw.url, timeout=10) as client,
        ):
            await control.post(f"/_feed/{name}", content=b"first")
            async with client.stream("POST", f"/stream/{name}", headers=headers) as response:
                assert response.status_code == 200
                chunks = response.aiter_raw()
                assert await wait_for(anext(chunks)) == b"first"
                await control.post(f"/_feed/{name}", content=b"second")
                assert await wait_for(anext(chunks)) == b"second"
                await control.post(f"/_feed/{name}", content=b"")  # end of stream
                assert [c async for c in chunks] == []


async def test_unkeyed_request_body_streams_to_the_upstream(
    gateway: GatewayFactory, upstream: Upstream
) -> None:
    """The upstream has the first part before the client sends the second."""
    gw = gateway()
    name = uuid.uuid4().hex
    async with httpx.AsyncClient(base_url=upstream.url, timeout=10) as control:

        async def body() -> AsyncIterator[bytes]:
            yield b"part-one"
            seen = await wait_for(control.get(f"/_received/{name}"))
            assert seen.content == b"part-one"
            yield b"part-two"

        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            response = await wait_for(client.post(f"/upload/{name}", content=body()))
    assert response.json() == {"received": 16}


async def test_client_gone_mid_upload_aborts_the_upstream_request(
    gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = gateway()
    name = uuid.uuid4().hex
    host, port = gw.url.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /upload/{name} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n".encode()
    )
    await writer.drain()
    async with httpx.AsyncClient(base_url=upstream.url, timeout=10) as control:
        assert (await wait_for(control.get(f"/_received/{name}"))).content == b"hello"
        writer.close()  # the client goes away in the middle of its body
        await writer.wait_closed()
        # The gateway gives up the upstream request instead of leaving it hanging.
        assert (await wait_for(control.get(f"/_received/{name}"))).content == b"<disconnected>"
    async with httpx.AsyncClient(base_url=gw.url) as client:
        assert (await client.get("/_retrysafe/health")).status_code == 200


async def test_concurrent_duplicates_in_one_gateway_run_once(
    gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = gateway()
    name = uuid.uuid4().hex
    key = {"Idempotency-Key": uuid.uuid4().hex}
    async with (
        httpx.AsyncClient(base_url=gw.url, timeout=20) as client,
        httpx.AsyncClient(base_url=upstream.url, timeout=20) as control,
    ):
        calls = [
            asyncio.create_task(client.post(f"/gate/{name}", content=b"x", headers=key))
            for _ in range(20)
        ]
        await wait_for(control.get(f"/_started/{name}"))
        await control.post(f"/_open/{name}")
        answers = await wait_for(asyncio.gather(*calls), 20)
    assert upstream.count(f"/gate/{name}") == 1
    assert {(a.status_code, a.content) for a in answers} == {(201, answers[0].content)}
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 19


def test_unreachable_upstream_is_a_502_problem_and_not_stored(gateway: GatewayFactory) -> None:
    import socket

    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        gw = gateway(upstream=f"http://127.0.0.1:{closed.getsockname()[1]}")
        key = {"Idempotency-Key": uuid.uuid4().hex}
        with httpx.Client(base_url=gw.url) as client:
            answers = [client.post("/x", content=b"a", headers=key) for _ in range(2)]
    for answer in answers:
        assert answer.status_code == 502
        assert answer.headers["content-type"] == PROBLEM
        doc = answer.json()
        assert doc["type"].endswith(":upstream-unreachable")
        assert doc["status"] == 502
        assert "idempotent-replayed" not in answer.headers  # 5xx released, never replayed


async def test_timeout_is_a_504_problem_and_the_retry_runs(
    gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = gateway(timeouts=Timeouts(read=0.3))
    name = uuid.uuid4().hex
    key = {"Idempotency-Key": uuid.uuid4().hex}
    async with (
        httpx.AsyncClient(base_url=gw.url, timeout=10) as client,
        httpx.AsyncClient(base_url=upstream.url, timeout=10) as control,
    ):
        first = await client.post(f"/gate/{name}", content=b"x", headers=key)
        assert first.status_code == 504
        assert first.json()["type"].endswith(":upstream-timeout")
        await control.post(f"/_open/{name}")
        retry = await client.post(f"/gate/{name}", content=b"x", headers=key)
    assert retry.status_code == 201
    assert "idempotent-replayed" not in retry.headers
    assert upstream.count(f"/gate/{name}") == 2  # the claim was released, so the retry ran


def test_upstream_5xx_passes_through_and_is_not_stored(
    gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = gateway()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    before = upstream.count("/status/503")
    with httpx.Client(base_url=gw.url) as client:
        answers = [client.post("/status/503", headers=key) for _ in range(2)]
    assert [a.status_code for a in answers] == [503, 503]
    assert all("idempotent-replayed" not in a.headers for a in answers)
    assert upstream.count("/status/503") == before + 2  # SPEC 12: released, so the retry ran


def test_per_route_policy(gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = gateway(
        routes=(
            RoutePolicy(path="/strict", required=True, anonymous="shared"),
            RoutePolicy(path="/tenant", scope_header="X-Api-Key", methods=("POST", "DELETE")),
        )
    )
    with httpx.Client(base_url=gw.url) as client:
        missing = client.post("/strict/x", content=b"a")
        free = client.post(unique("echo"), content=b"a")  # default route: key optional
        path = "/tenant" + unique("t")
        key = uuid.uuid4().hex
        a1 = client.post(path, headers={"Idempotency-Key": key, "X-Api-Key": "alice"})
        b1 = client.post(path, headers={"Idempotency-Key": key, "X-Api-Key": "bob"})
        a2 = client.post(path, headers={"Idempotency-Key": key, "X-Api-Key": "alice"})
        d1 = client.delete(path, headers={"Idempotency-Key": "del", "X-Api-Key": "alice"})
        d2 = client.delete(path, headers={"Idempotency-Key": "del", "X-Api-Key": "alice"})
    assert missing.status_code == 400
    assert missing.json()["type"].endswith(":missing-key")
    assert upstream.count("/strict/x") == 0
    assert free.status_code == 200
    # Scoped by API key: alice and bob each ran once; alice's repeat replayed.
    assert upstream.count(path) == 2
    assert a2.headers.get("idempotent-replayed") == "true"
    assert "idempotent-replayed" not in b1.headers
    assert a1.content == a2.content
    assert upstream.count(path, "DELETE") == 1  # DELETE is covered on this route only
    assert d2.headers.get("idempotent-replayed") == "true"
    assert d1.status_code == 200


def test_route_ttl(
    gateway: GatewayFactory,
    upstream: Upstream,
    clocked_store: tuple[SQLiteStore, ManualClock],
) -> None:
    store, clock = clocked_store
    gw = gateway(store=store, routes=(RoutePolicy(path="/short", ttl=10.0, anonymous="shared"),))
    short, long = "/short" + unique("s"), unique("echo")
    k1, k2 = {"Idempotency-Key": "k-short"}, {"Idempotency-Key": "k-long"}
    with httpx.Client(base_url=gw.url) as client:
        client.post(short, headers=k1)
        client.post(long, headers=k2)
        clock.advance(11)
        again_short = client.post(short, headers=k1)
        again_long = client.post(long, headers=k2)
    assert upstream.count(short) == 2
    assert "idempotent-replayed" not in again_short.headers
    assert upstream.count(long) == 1
    assert again_long.headers.get("idempotent-replayed") == "true"


def test_health_and_metrics(gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = gateway()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    path = unique("echo")
    with httpx.Client(base_url=gw.url) as client:
        health = client.get("/_retrysafe/health")
        client.post(path, headers=key)
        client.post(path, headers=key)
        metrics = client.get("/_retrysafe/metrics")
        missing = client.get("/_retrysafe/nope")
        post = client.post("/_retrysafe/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["store"] == "sqlite"
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = metrics.text.splitlines()
    assert 'retrysafe_gateway_responses_total{code="2xx"} 2' in lines
    assert "retrysafe_gateway_replays_total 1" in lines
    assert missing.status_code == 404
    assert post.status_code == 405
    assert upstream.count("/_retrysafe/health", "GET") == 0  # never forwarded


def test_health_reports_a_broken_store(gateway: GatewayFactory, tmp_path: Any) -> None:
    gw = gateway()
    gw.store.close()
    (tmp_path / "gateway.db").unlink()
    (tmp_path / "gateway.db").mkdir()  # the store's file is now a directory: unusable
    with httpx.Client(base_url=gw.url) as client:
        health = client.get("/_retrysafe/health")
        post = client.post("/anything", headers={"Idempotency-Key": "k"})
    assert health.status_code == 503
    assert health.json()["type"].endswith(":store-unavailable")
    assert post.status_code == 503  # SPEC 17: fail closed, the upstream is not called
    assert json.loads(post.content)["type"].endswith(":store-unavailable")
