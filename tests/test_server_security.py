"""Server security: malformed credentials are a 401 (never a 500), refused admin attempts are logged without the
credential, the audit log is flushed and fsynced per record, and ``/health`` tells an anonymous caller only that
the server is up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from alignscope.server import GuardAuditLog, ServerSettings, create_app
from alignscope.testing import tiny_local_model

URL = "/v1/chat/completions"
MALFORMED: list[bytes] = [
    "Bearer ключ".encode(),  # non-ASCII (UTF-8 bytes)
    "Bearer cl\xe9".encode("latin-1"),  # non-ASCII (a latin-1 byte)
    b"k1",  # no scheme
    b"Bearer",  # no token
    b"Bearer ",
    b"",
    b"Basic azE=",
    b"Bearer k1 extra",
]


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_local_model(seed=0)


def chat(model: Any) -> dict[str, Any]:
    return {"model": model.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize("header", MALFORMED)
def test_malformed_api_key_is_401(tiny: Any, header: bytes) -> None:
    with TestClient(
        create_app(tiny, settings=ServerSettings(api_key="k1")), raise_server_exceptions=False
    ) as c:
        r = c.post(URL, json=chat(tiny), headers={"Authorization": header})
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/models", headers={"Authorization": header}).status_code == 401


def test_valid_api_keys_ascii_or_not(tiny: Any) -> None:
    with TestClient(create_app(tiny, settings=ServerSettings(api_key="k1"))) as c:
        for header in (b"Bearer k1", b"bearer k1", b"Bearer  k1 "):
            assert c.post(URL, json=chat(tiny), headers={"Authorization": header}).status_code == 200
    with TestClient(create_app(tiny, settings=ServerSettings(api_key="clé"))) as c:
        assert c.get("/v1/models", headers={"Authorization": "Bearer clé".encode()}).status_code == 200
    with pytest.raises(ValueError, match="api_key is empty"):
        create_app(tiny, settings=ServerSettings(api_key=""))


@pytest.mark.parametrize("header", MALFORMED)
def test_malformed_admin_token_is_401_and_logged_without_it(tiny: Any, tmp_path: Path, header: bytes) -> None:
    log_file = tmp_path / "audit.jsonl"
    settings = ServerSettings(admin_token="op-s3cret")
    with TestClient(
        create_app(tiny, settings=settings, audit_log=log_file), raise_server_exceptions=False
    ) as c:
        r = c.post(f"/admin/models/{tiny.name}/disable", headers={"Authorization": header})
        assert r.status_code == 401, r.text
        assert c.get("/admin/models", headers={"Authorization": header}).status_code == 401
        assert c.post(URL, json=chat(tiny)).status_code == 200  # still enabled
    denied = [x for x in GuardAuditLog(log_file).records() if x["event"] == "admin_denied"]
    assert [(x["method"], x["path"]) for x in denied] == [
        ("POST", f"/admin/models/{tiny.name}/disable"),
        ("GET", "/admin/models"),
    ]
    assert all(x["client"] == "testclient" and x["reason"] for x in denied)
    text = log_file.read_text(encoding="utf-8")
    assert "op-s3cret" not in text
    token = header.partition(b" ")[2].strip()
    if token:
        assert token.decode("latin-1") not in text


def test_failed_admin_attempt_with_a_wrong_token_is_logged(tiny: Any, tmp_path: Path, caplog: Any) -> None:
    log_file = tmp_path / "audit.jsonl"
    settings = ServerSettings(admin_token="op-s3cret")
    with TestClient(create_app(tiny, settings=settings, audit_log=log_file)) as c, caplog.at_level("WARNING"):
        r = c.post(f"/admin/models/{tiny.name}/enable", headers={"Authorization": "Bearer guess-1"})
    assert r.status_code == 401
    (record,) = [x for x in GuardAuditLog(log_file).records() if x["event"] == "admin_denied"]
    assert record["reason"] == "wrong token" and record["path"] == f"/admin/models/{tiny.name}/enable"
    assert "guess-1" not in log_file.read_text() and "guess-1" not in caplog.text
    assert f"/admin/models/{tiny.name}/enable" in caplog.text and "testclient" in caplog.text


def test_health_says_only_up_without_a_credential(tiny: Any) -> None:
    settings = ServerSettings(api_key="k1", admin_token="op")
    with TestClient(create_app(tiny, settings=settings, served_name="secret-model-name")) as c:
        anonymous = c.get("/health")
        assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok"}
        assert "secret-model-name" not in anonymous.text
        assert c.get("/health", headers={"Authorization": "Bearer wrong"}).json() == {"status": "ok"}
        for key in ("k1", "op"):
            full = c.get("/health", headers={"Authorization": f"Bearer {key}"}).json()
            assert full["models"]["secret-model-name"]["enabled"] is True
    with TestClient(create_app(tiny)) as c:  # no keys configured at all: still nothing but "up"
        assert c.get("/health").json() == {"status": "ok"}


def test_audit_log_is_flushed_and_fsynced_per_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import alignscope.server.guards as guards

    path = tmp_path / "audit.jsonl"
    lines_at_fsync: list[int] = []
    real_fsync = guards.os.fsync

    def fsync(fd: int) -> None:
        # the record must already be in the file (flushed) when it is fsynced
        lines_at_fsync.append(len(path.read_text(encoding="utf-8").splitlines()))
        real_fsync(fd)

    monkeypatch.setattr(guards.os, "fsync", fsync)
    log = GuardAuditLog(path)
    for i in range(3):
        log.write("request", i=i)
    assert lines_at_fsync == [1, 2, 3]
    assert [json.loads(x)["i"] for x in path.read_text().splitlines()] == [0, 1, 2]


def test_every_v1_request_is_in_the_audit_log_with_its_status(tiny: Any, tmp_path: Path) -> None:
    log_file = tmp_path / "audit.jsonl"
    with TestClient(create_app(tiny, audit_log=log_file)) as c:
        c.post(URL, json=chat(tiny))
        c.post(URL, content="{oops", headers={"content-type": "application/json"})
        c.post(URL, json={**chat(tiny), "stream": True})
        c.get("/v1/")
        c.get("/health")  # not a /v1 request: not logged
    records = [x for x in GuardAuditLog(log_file).records() if x["event"] == "request"]
    assert [(x["method"], x["path"], x["status"]) for x in records] == [
        ("POST", URL, 200),
        ("POST", URL, 400),
        ("POST", URL, 200),
        ("GET", "/v1/", 404),
    ]
    assert records[1]["error"].startswith("invalid JSON")
    assert records[2]["stream"] is True and records[2]["finish_reasons"] == ["length"]
    assert all("authorization" not in json.dumps(x).lower() for x in records)
