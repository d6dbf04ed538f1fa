"""What `chestxray serve` checks and adds, in process (TestClient): the Host and Origin checks, the security headers
and CSP, the public model card, the local API docs, and answers that match the OpenAPI schema. The same checks on
a real server, with slow clients and concurrent uploads, are in test_serve.py."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from chestxray.deploy.security import WebPolicy, allowed_hosts, host_name
from chestxray.deploy.serve import PAGE, create_app, public_card


@pytest.fixture(scope="module")
def client(trained_run: Path):
    policy = WebPolicy(allowed_hosts("127.0.0.1", ["xray.example.org", "*.ward.example.org"]),
                       ("https://portal.example.org",))
    with TestClient(create_app(trained_run, policy=policy), base_url="http://localhost:8000") as c:
        yield c


@pytest.fixture(scope="module")
def sample(shared_data: Path) -> bytes:
    return sorted((shared_data / "nih-chestxray14" / "images").glob("*.png"))[0].read_bytes()


def test_host_names_parsed_and_matched() -> None:
    assert host_name("LocalHost:8000") == "localhost" and host_name("[::1]:8000") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1" and host_name("::1") == "::1"
    assert "10.0.0.5" in allowed_hosts("10.0.0.5") and "0.0.0.0" not in allowed_hosts("0.0.0.0")


@pytest.mark.parametrize("host, status", [("localhost:8000", 200), ("127.0.0.1:8000", 200), ("[::1]:8000", 200),
                                          ("xray.example.org", 200), ("a.ward.example.org", 200),
                                          ("attacker.example:8000", 403), ("ward.example.org", 403),
                                          ("xray.example.org.attacker.example", 403), ("", 403)])
def test_host_header_checked_against_the_servers_names(client: TestClient, host: str, status: int) -> None:
    """A DNS-rebinding page (its own name resolving to 127.0.0.1) reads neither the card nor the page."""
    for path in ("/model", "/", "/openapi.json"):
        r = client.get(path, headers={"host": host})
        assert r.status_code == status, (path, host, r.text)
    if status == 403:
        assert "not a name of this server" in r.text and "--allowed-host" in r.text
    assert client.get("/health", headers={"host": host}).status_code == 200  # probes pass whatever the name


@pytest.mark.parametrize("headers, status", [
    ({"origin": "http://localhost:8000"}, 200),  # the server's own page
    ({"origin": "https://portal.example.org"}, 200),  # --allowed-origin
    ({}, 200),  # not a browser (curl, scripts)
    ({"origin": "http://attacker.example"}, 403),
    ({"origin": "http://localhost:9999"}, 403),  # another port is another origin
    ({"origin": "null"}, 403),  # sandboxed frames, file:// pages
    ({"sec-fetch-site": "cross-site"}, 403),
])
def test_uploads_only_from_the_same_origin(client: TestClient, sample: bytes, headers: dict, status: int) -> None:
    for path, params in (("/predict", {}), ("/explain", {"finding": "Effusion"})):
        r = client.post(path, params=params, files={"file": ("x.png", sample, "image/png")}, headers=headers)
        assert r.status_code == status, (path, headers, r.text[:300])
        if status == 403:
            assert "may not send uploads" in r.text


def test_security_headers_and_csp(client: TestClient, sample: bytes) -> None:
    page = client.get("/")
    inline = re.findall(r"<script>(.*?)</script>", PAGE.read_text(encoding="utf-8"), flags=re.S)
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    csp = page.headers["content-security-policy"]
    script_src = re.search(r"script-src ([^;]*)", csp).group(1)
    assert f"'sha256-{digest}'" in script_src and "unsafe" not in script_src and "http" not in csp
    assert "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
    answers = [page, client.get("/model"), client.post("/predict", files={"file": ("x.png", sample)}),
               client.get("/openapi.json")]
    for r in answers:
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer" and r.headers["cache-control"] == "no-store"
        assert "server" not in r.headers or "uvicorn" not in r.headers["server"]
    assert answers[1].headers["content-security-policy"].startswith("default-src 'none'")


def test_public_card_has_no_paths_cpu_flags_or_library_versions(client: TestClient, trained_run: Path) -> None:
    card = client.get("/model").json()
    for key in ("prepared", "run", "precision_reason"):
        assert key not in card
    assert card["versions"] == {"chestxray": card["versions"]["chestxray"]}
    text = str(card)
    assert str(trained_run.parent) not in text and "/tmp" not in text
    assert card["labels"][4] == "Effusion" and card["image_size"] > 0 and card["thresholds"]
    nested = public_card({"site": {"profile": "/home/x/site.json", "name": "A"}, "files": ["C:\\x", "b.png"]})
    assert nested == {"site": {"name": "A"}, "files": ["b.png"]}


def test_api_docs_served_locally(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", docs.text), "the docs page loads from another host"
    for name, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "text/css")):
        r = client.get(f"/docs-assets/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"] and len(r.content) > 10_000
    assert client.get("/docs-assets/index.html").status_code == 404  # only the three files the page needs
    assert client.get("/redoc").status_code == 404  # ReDoc would come from a CDN: off


def test_answers_match_the_schema(client: TestClient, sample: bytes) -> None:
    """422 for a missing parameter carries one string, as the schema and every other refusal say; an empty file is
    refused with a status the schema lists for it."""
    schema = client.get("/openapi.json").json()
    r = client.post("/explain", files={"file": ("x.png", sample)})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str) and "finding" in r.json()["detail"]
    explain = schema["paths"]["/explain"]["post"]
    assert explain["responses"]["422"]["content"]["application/json"]["schema"]["properties"]["detail"] == {
        "type": "string"}
    r = client.post("/predict", files={"file": ("empty.png", b"")})
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"].get("minLength") == 1  # the schema says an empty file is not valid input
    assert str(r.status_code) in schema["paths"]["/predict"]["post"]["responses"] and "empty" in r.json()["detail"]


def test_uploads_decoded_exactly_as_predict_decodes_files(shared_data: Path, tmp_path: Path) -> None:
    """A JPEG upload is decoded at the draft scale predict uses (load_square), so the model sees the same pixels;
    a 16-bit PNG goes through the lookup-table stretch."""
    import numpy as np
    from PIL import Image

    from chestxray.data.imaging import load_square
    from chestxray.deploy.uploads import Limits, decode_upload

    jpeg = sorted((shared_data / "kaggle-chest-xray-pneumonia").rglob("*.jpeg"))[0]
    png16 = tmp_path / "x16.png"
    Image.fromarray((np.arange(300 * 500, dtype=np.uint32).reshape(300, 500) % 4096).astype(np.uint16)).save(png16)
    for path in (jpeg, png16):
        for mode in ("crop", "pad"):
            _, square = decode_upload(path.read_bytes(), path.name, 64, mode, Limits())
            assert np.array_equal(square, load_square(path, 64, mode)), (path.name, mode)
