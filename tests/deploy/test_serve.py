"""`chestxray serve`: a real server on loopback with a bundle trained in the test, driven by headless Chromium
(upload through the page's file input, table and Grad-CAM overlay appear, a broken file shows its error),
fuzzed from its own OpenAPI schema (no 5xx, /health still answers), and its limits checked in process."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from fastapi.testclient import TestClient

from chestxray.deploy.serve import create_app
from chestxray.deploy.uploads import Limits
from chestxray.inference.predict import predict_images
from tests.deploy.conftest import free_port, running
from tests.report.test_run_report import _browser


@pytest.fixture(scope="module")
def sample(shared_data: Path) -> Path:
    return sorted((shared_data / "nih-chestxray14" / "images").glob("*.png"))[0]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a would-be decompression bomb) over a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 100))
            + _chunk(b"IEND", b""))


def test_page_in_chromium_upload_table_overlay_and_error(server: str, sample: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    expected = requests.post(f"{server}/predict", files={"file": sample.open("rb")}, timeout=60).json()
    driver = _browser(1280, 900)
    try:
        _record_csp_violations(driver)
        driver.get(server + "/")
        driver.find_element(By.ID, "file").send_keys(str(sample))
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tbody tr")) == 14)
        wait.until(lambda d: d.execute_script("const i = document.getElementById('overlay');"
                                              "return i.complete && i.naturalWidth > 0;"))
        rows = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        shown = {r.find_elements(By.TAG_NAME, "td")[0].text: r for r in rows}
        for f in expected["findings"]:
            assert shown[f["name"]].find_elements(By.TAG_NAME, "td")[1].text == f"{f['probability']:.3f}"
            assert ("positive" in shown[f["name"]].get_attribute("class")) == bool(f["positive"])
        assert "Not calibrated for your site" in driver.find_element(By.ID, "calibration").text
        assert driver.execute_script("const p = document.getElementById('findings-pane');"
                                     "return p.scrollWidth <= p.clientWidth;")  # every column visible
        assert driver.execute_script("return document.getElementById('preview').naturalWidth") > 0
        assert driver.find_element(By.ID, "error").text == ""
        broken = tmp_path / "broken.png"
        broken.write_text("this is not an x-ray")
        driver.find_element(By.ID, "file").send_keys(str(broken))
        wait.until(lambda d: d.find_element(By.ID, "error").text != "")
        assert "broken.png: not a PNG, JPEG or DICOM file" in driver.find_element(By.ID, "error").text
        assert driver.execute_script("return window.__csp") == []  # the page works under its own CSP
    finally:
        driver.quit()
    assert requests.get(f"{server}/health", timeout=10).json()["status"] == "ok"


def _record_csp_violations(driver) -> None:
    """Collect every Content-Security-Policy violation of the pages `driver` loads next into window.__csp."""
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (
        "window.__csp = []; document.addEventListener('securitypolicyviolation', "
        "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")})


def test_api_docs_render_in_chromium_from_local_assets(server: str) -> None:
    """/docs is Swagger UI from the swagger-ui-bundle package: it renders with no network and no CSP violation."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(1280, 900)
    try:
        _record_csp_violations(driver)
        driver.get(server + "/docs")
        WebDriverWait(driver, 60).until(lambda d: {"/predict", "/explain", "/model"} <= {
            e.text for e in d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")})
        assert driver.execute_script("return window.__csp") == []
        hosts = driver.execute_script("return performance.getEntriesByType('resource').map(e => new URL(e.name).host)")
        assert set(hosts) == {server.split("//")[1]}, hosts  # every asset from the server itself
    finally:
        driver.quit()


def test_real_server_refuses_rebinding_and_cross_origin_uploads(server: str, sample: Path) -> None:
    port = server.rsplit(":", 1)[1]
    r = requests.get(f"{server}/model", headers={"Host": f"rebind.attacker.example:{port}"}, timeout=10)
    assert r.status_code == 403 and "--allowed-host" in r.text
    r = requests.post(f"{server}/predict", files={"file": sample.open("rb")}, timeout=60,
                      headers={"Origin": "http://attacker.example"})
    assert r.status_code == 403 and "cross-origin" in r.text
    r = requests.post(f"{server}/predict", files={"file": sample.open("rb")}, timeout=60,
                      headers={"Origin": f"http://127.0.0.1:{port}"})
    assert r.status_code == 200 and r.headers["x-frame-options"] == "DENY"
    assert "uvicorn" not in r.headers.get("server", "")


def _png16(width: int, height: int) -> bytes:
    """A 16-bit grey PNG of width x height that compresses to a few hundred KB (a sparse grid on black)."""
    from PIL import Image

    pixels = np.zeros((height, width), np.uint16)
    pixels[::64, :] = 4000
    pixels[:, ::64] = 1000
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def test_concurrent_large_uploads_decode_two_at_a_time(trained_run: Path, tmp_path: Path) -> None:
    """Eight 24-megapixel 16-bit PNGs at once: at most two are decoded at a time (each ~0.15 GB), so the server's
    peak memory grows by well under what eight parallel decodes take (~1.2 GB); all eight are answered."""
    from concurrent.futures import ThreadPoolExecutor

    image = _png16(6000, 4000)
    assert len(image) < 2_000_000
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(["chestxray", "serve", str(trained_run), "--port", str(port)], f"{base}/health",
                 tmp_path / "serve.log") as proc:
        post = lambda _: requests.post(f"{base}/predict", files={"file": ("big.png", image)}, timeout=300)  # noqa: E731
        assert post(0).status_code == 200  # warm: the first decode's memory is in the baseline
        before = _peak_rss(proc.pid)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
        growth = _peak_rss(proc.pid) - before
    assert [a.status_code for a in answers] == [200] * 8, answers[0].text
    print(f"peak memory grew by {growth / 1e6:.0f} MB for 8 concurrent uploads")
    assert growth < 600e6, f"peak memory grew by {growth / 1e6:.0f} MB for 8 concurrent uploads"
    with running(["chestxray", "serve", str(trained_run), "--port", str(port)], f"{base}/health",
                 tmp_path / "serve2.log"):
        r = requests.post(f"{base}/predict", files={"file": ("huge.png", _png16(6000, 5000))}, timeout=60)
    assert r.status_code == 413 and "30 megapixels is over the 25 MP limit" in r.json()["detail"]


def test_slow_clients_are_cut_off_and_connections_bounded(trained_run: Path, tmp_path: Path) -> None:
    """With --read-timeout 2: a connection that sends nothing, one that trickles its headers and one that trickles
    its body are each answered 408 and closed; while slow clients hold all --max-connections, a new request gets
    503 at once, and once they are cut off the server answers again."""
    import socket

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(["chestxray", "serve", str(trained_run), "--port", str(port), "--read-timeout", "2",
                  "--max-connections", "6"], f"{base}/health", tmp_path / "serve.log"):
        connect = lambda: socket.create_connection(("127.0.0.1", int(port)), timeout=60)  # noqa: E731
        socks = [connect()]
        socks[0].sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                         b"boundary=x\r\nContent-Length: 100000\r\n\r\n--x\r\n")  # body never finished
        assert requests.get(f"{base}/health", timeout=30).status_code == 200  # the slow POST is in the app by now
        socks += [connect() for _ in range(4)]  # these send nothing...
        socks[1].sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # ...or headers never finished
        busy = requests.get(f"{base}/health", timeout=30)
        assert busy.status_code == 503  # 5 slow connections and this one: the limit of 6 is reached
        for s in socks:  # each is closed by the server (recv returns b"" at the end), none by us
            received = b""
            while chunk := s.recv(4096):
                received += chunk
            assert received.startswith(b"HTTP/1.1 408"), received[:200]
            s.close()
        assert requests.get(f"{base}/health", timeout=30).status_code == 200


def test_api_matches_predict_and_refuses_bad_uploads(server: str, trained_run: Path, shared_data: Path) -> None:
    dicom = shared_data / "cxr-dicom-samples" / "siim_850819_flagged_MONOCHROME1.dcm"
    got = requests.post(f"{server}/predict", files={"file": ("scan.bin", dicom.read_bytes())}, timeout=60)
    assert got.status_code == 200, got.text  # accepted by content, whatever the name
    ref = predict_images(trained_run, [dicom])
    probs = [f["probability"] for f in got.json()["findings"]]
    assert np.allclose(probs, ref[[f"p_{f['name']}" for f in got.json()["findings"]]].to_numpy()[0], atol=1e-5)
    card = requests.get(f"{server}/model", timeout=10).json()
    assert card["architecture"] == "cnn-tiny" and len(card["thresholds"]) == 14
    cases = [({"file": ("x.png", b"GIF89a....")}, 415, "not a PNG, JPEG or DICOM"),
             ({"file": ("big.png", _png_header(8000, 8000))}, 413, "64 megapixels is over the 25 MP limit"),
             ({"file": ("bomb.png", _png_header(20000, 20000))}, 413, "over the pixel limit"),
             ({"file": ("cut.png", _png_header(64, 64))}, 422, "cut.png: truncated image data"),
             ({"other": ("x.png", b"x")}, 400, "no file in the request")]
    for files, status, reason in cases:
        r = requests.post(f"{server}/predict", files=files, timeout=30)
        assert r.status_code == status and reason in r.json()["detail"], (status, r.status_code, r.text)
    r = requests.post(f"{server}/explain", params={"finding": "Nope"}, files={"file": dicom.open("rb")}, timeout=30)
    assert r.status_code == 422 and "unknown finding 'Nope'" in r.json()["detail"]
    assert requests.get(f"{server}/health", timeout=10).status_code == 200


def test_fuzzed_from_openapi_schema_answers_match_it(server: str, tmp_path: Path) -> None:
    """Every schemathesis check: no 5xx, only documented status codes and content types, bodies that match the
    response schemas, schema-invalid requests refused. Left out: 'positive_data_acceptance', which counts a
    GIF sent as the file field as valid input (a JSON schema cannot say "PNG, JPEG or DICOM bytes"); its 415 is
    documented and tested in test_api_matches_predict_and_refuses_bad_uploads."""
    cli = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run([str(cli), "run", f"{server}/openapi.json", "--checks", "all", "--exclude-checks",
                             "positive_data_acceptance", "--max-examples", "15", "--seed", "1",
                             "--phases", "examples,coverage,fuzzing", "--workers", "1"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Tested: 4" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1]
    assert requests.get(f"{server}/health", timeout=10).json()["status"] == "ok"


def test_upload_limits_and_keep_uploads_in_process(trained_run: Path, sample: Path, tmp_path: Path) -> None:
    limits = Limits(max_bytes=len(sample.read_bytes()) - 1)
    with TestClient(create_app(trained_run, limits), base_url="http://localhost") as client:
        r = client.post("/predict", files={"file": sample.open("rb")})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
    kept = tmp_path / "kept"
    with TestClient(create_app(trained_run, keep_uploads=kept), base_url="http://localhost") as client:
        assert client.post("/predict", files={"file": sample.open("rb")}).status_code == 200
        png = client.post("/explain", params={"finding": "Effusion"}, files={"file": sample.open("rb")})
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert [p.read_bytes() for p in kept.iterdir()] == [sample.read_bytes()] * 2


@pytest.fixture(scope="module")
def big_sample(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real sample re-saved as an uncompressed 1,536 px PNG: over 1 MB, where multipart parsers spool to disk."""
    from PIL import Image

    path = tmp_path_factory.mktemp("big") / "big.png"
    with Image.open(sample) as im:
        im.resize((1536, 1536)).save(path, compress_level=0)
    assert path.stat().st_size > 2_000_000
    return path


def _files_under(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*"))


def _upload_both(base: str, image: Path) -> None:
    r = requests.post(f"{base}/predict", files={"file": image.open("rb")}, timeout=120)
    assert r.status_code == 200 and len(r.json()["findings"]) == 14, r.text
    r = requests.post(f"{base}/explain", params={"finding": "Effusion"}, files={"file": image.open("rb")}, timeout=120)
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG"), r.text


def test_real_server_stores_no_upload_and_warns_off_loopback(trained_run: Path, sample: Path, big_sample: Path,
                                                             tmp_path: Path) -> None:
    """`serve --host 0.0.0.0` warns there is no authentication; uploads leave no file in TMPDIR or the working
    directory; with --keep-uploads DIR each upload appears there and nowhere else."""
    tmp, cwd, kept = tmp_path / "tmpdir", tmp_path / "cwd", tmp_path / "kept"
    tmp.mkdir()
    cwd.mkdir()
    env = {"TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp)}
    port = free_port()
    log = tmp_path / "open.log"
    with running(["chestxray", "serve", str(trained_run), "--host", "0.0.0.0", "--port", str(port)],
                 f"http://127.0.0.1:{port}/health", log, env=env, cwd=cwd):
        for image in (sample, big_sample):
            _upload_both(f"http://127.0.0.1:{port}", image)
        assert _files_under(tmp, cwd) == []
    text = " ".join(log.read_text().split())
    assert text.count(f"listening on 0.0.0.0:{port} with NO authentication") == 1, text  # said once, plainly
    assert "uploads are not stored" in text
    assert _files_under(tmp, cwd) == []
    port = free_port()
    with running(["chestxray", "serve", str(trained_run), "--port", str(port), "--keep-uploads", str(kept)],
                 f"http://127.0.0.1:{port}/health", tmp_path / "kept.log", env=env, cwd=cwd):
        _upload_both(f"http://127.0.0.1:{port}", sample)
    assert sorted(p.read_bytes() for p in kept.iterdir()) == [sample.read_bytes()] * 2
    assert _files_under(tmp, cwd) == []
    assert "NO authentication" not in (tmp_path / "kept.log").read_text()  # loopback: no warning
