"""The README's FastAPI and Flask examples run as printed (code blocks executed verbatim)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"


def readme_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"expected one README python block containing {marker!r}"
    return found[0]


def run_block(marker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.chdir(tmp_path)  # the examples open sqlite:///retrysafe.db, relative to the cwd
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(readme_block(marker), str(README), "exec"), namespace)
    return namespace


def test_readme_examples_are_about_ten_lines() -> None:
    for marker in ("FastAPI()", "Flask(__name__)"):
        code = [line for line in readme_block(marker).splitlines() if line.strip()]
        assert len(code) <= 11, marker


async def test_fastapi_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run_block("FastAPI()", tmp_path, monkeypatch)
    order = {"amount": 1999, "currency": "eur"}
    transport = httpx.ASGITransport(app=ns["app"])
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            first = await client.post("/charges", json=order, headers={"Idempotency-Key": KEY})
            again = await client.post("/charges", json=order, headers={"Idempotency-Key": KEY})
            other = await client.post(
                "/charges", json={"amount": 1}, headers={"Idempotency-Key": KEY}
            )
            keyless = await client.post("/charges", json=order)
    finally:
        ns["store"].close()

    assert first.status_code == 201
    assert first.json()["amount"] == 1999
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content  # same charge id: the handler ran once
    assert other.status_code == 422
    assert keyless.status_code == 400  # Policy(required=True)
    assert (tmp_path / "retrysafe.db").exists()


def test_flask_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = run_block("Flask(__name__)", tmp_path, monkeypatch)
    app = ns["app"]
    order = {"amount": 1999, "currency": "eur"}
    try:
        # buffered=True: like a real server, read each response to its end (which is when the
        # WSGI middleware stores it) before sending the next request.
        client = app.test_client()
        headers = {"Idempotency-Key": KEY}
        first = client.post("/charges", json=order, headers=headers, buffered=True)
        again = client.post("/charges", json=order, headers=headers, buffered=True)
        other = client.post("/charges", json={"amount": 1}, headers=headers, buffered=True)
        keyless = client.post("/charges", json=order, buffered=True)
        keyless_again = client.post("/charges", json=order, buffered=True)
    finally:
        app.wsgi_app.store.close()

    assert first.status_code == 201
    assert first.get_json()["amount"] == 1999
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.data == first.data  # same charge id: the handler ran once
    assert other.status_code == 422
    # The key is optional here: keyless requests run every time, nothing stored.
    assert keyless.status_code == keyless_again.status_code == 201
    assert keyless.get_json()["id"] != keyless_again.get_json()["id"]
