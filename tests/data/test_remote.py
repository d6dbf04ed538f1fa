"""PREPARED data on a web server: a real nginx (Debian's package) serves a prepared folder on a free loopback port;
one epoch streamed from the URL sees exactly the samples, in the same order, as from the local folder; train,
evaluate and verify take the URL; network errors name the URL and the shard. A faulty server started by the test
(nginx cannot misbehave on purpose) drops the connection in the middle of a shard or stalls: verify, an epoch and
train end with one line naming the shard's URL and the way out, and a stall ends after the configured timeout."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.datamodule import ChestXrayDataModule
from chestxray.data.remote import TIMEOUT_ENV, http_timeout
from chestxray.data.shards import iter_shard, read_manifest, shard_size
from chestxray.data.verify import verify_prepared
from chestxray.errors import ConfigError, DataError
from tests.deploy.conftest import (  # starts a server process, fails the test if it cannot
    free_port,
    running,
)

NGINX_CONF = """daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp-body;
    proxy_temp_path {root}/tmp-proxy;
    fastcgi_temp_path {root}/tmp-fastcgi;
    uwsgi_temp_path {root}/tmp-uwsgi;
    scgi_temp_path {root}/tmp-scgi;
    types {{ application/json json; application/x-tar tar; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {docs};
    }}
}}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, synthetic_prepared: Path) -> Iterator[tuple[str, Path]]:
    """(URL, local folder): a copy of the synthetic PREPARED folder served by nginx under /prepared/."""
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None)
    if binary is None:
        pytest.fail("nginx is not installed; `make test` installs Debian's nginx (apt-get install nginx)")
    root = tmp_path_factory.mktemp("nginx")
    docs = root / "docs"
    shutil.copytree(synthetic_prepared, docs / "prepared")
    port = free_port()
    (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, docs=docs, port=port))
    url = f"http://127.0.0.1:{port}/prepared"
    with running([binary, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log")],
                 f"{url}/manifest.json", root / "nginx.out", timeout=20):
        yield url, docs / "prepared"


def _epoch(prepared: str | Path, split: str, train: bool) -> list[tuple[str, bytes]]:
    """(image_id, pixel bytes) of every sample one epoch of `split` yields, in order (2 loader workers)."""
    dm = ChestXrayDataModule(prepared, batch_size=16, num_workers=2, seed=0, persistent_workers=False)
    loader = dm.train_dataloader() if train else dm.split_dataloader(split)
    seen = []
    for batch in loader:
        for image_id, image in zip(batch["image_id"], batch["image"]):
            seen.append((image_id, image.to(torch.float32).numpy().tobytes()))
    return seen


def test_one_epoch_from_nginx_equals_the_local_folder(served: tuple[str, Path]) -> None:
    url, local = served
    assert read_manifest(url) == read_manifest(local)
    for split, train in (("train", True), ("val", False)):
        remote, here = _epoch(url, split, train), _epoch(local, split, train)
        assert len(here) == read_manifest(local)["splits"][split]["count"]
        assert [i for i, _ in remote] == [i for i, _ in here]  # same samples, same order
        assert remote == here  # same pixels
    access = (local.parent.parent / "access.log").read_text()
    assert "GET /prepared/train-000000.tar" in access  # really streamed through nginx


def test_train_evaluate_and_verify_take_the_url(served: tuple[str, Path], tmp_path: Path) -> None:
    url, local = served
    assert verify_prepared(url, checksums=True).shards == sum(
        len(v["shards"]) for v in read_manifest(local)["splits"].values())
    result = CliRunner().invoke(app, ["verify", url])
    assert result.exit_code == 0 and "match manifest.json" in result.output, result.output
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", url, "--model", "cnn-tiny", "--epochs", "1", "--max-steps", "4",
                                      "--batch-size", "16", "--num-workers", "0", "--no-mlflow", "--no-progress",
                                      "--out", str(run)])
    assert result.exit_code == 0, result.output
    card = json.loads((run / "bundle" / "card.json").read_text())
    assert card["prepared"] == url and card["data_fingerprint"] == read_manifest(local)["fingerprint"]
    result = CliRunner().invoke(app, ["evaluate", str(run), "--n-boot", "10"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["prepared"] == url and metrics["same_data_as_training"] is True


def test_network_errors_name_the_url_and_the_shard(served: tuple[str, Path], tmp_path: Path) -> None:
    url, local = served
    manifest = read_manifest(local)
    name = manifest["splits"]["val"]["shards"][0]
    hidden = local / name
    hidden.rename(tmp_path / name)
    try:
        with pytest.raises(FileNotFoundError):
            shard_size(f"{url}/{name}")
        with pytest.raises(DataError, match=f"{url}/{name}: shard missing"):
            verify_prepared(url)
        with pytest.raises(DataError, match=f"{url}/{name}: HTTP 404"):
            list(iter_shard(f"{url}/{name}", 32))
    finally:
        (tmp_path / name).rename(hidden)
    with pytest.raises(DataError, match=r"http://127\.0\.0\.1:\d+/prepared/manifest\.json: cannot reach the server"):
        read_manifest(f"http://127.0.0.1:{free_port()}/prepared")
    result = CliRunner().invoke(app, ["verify", f"{url}/nothing-here"])
    assert result.exit_code == 1 and f"{url}/nothing-here/manifest.json: HTTP 404" in " ".join(result.output.split())


class _FaultyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, except those named in the server's `cut` (full Content-Length, then the socket closes after
    half the bytes), `stall` (half the bytes, then silence) and `mute` (no answer at all) sets."""

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        server = self.server
        if name in server.mute:
            server.release.wait(30)
            return
        if name not in server.cut | server.stall:
            super().do_GET()
            return
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        if name in server.stall:
            server.release.wait(30)
        self.close_connection = True

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def faulty(synthetic_prepared: Path) -> Iterator[tuple[str, http.server.ThreadingHTTPServer]]:
    """(URL of the synthetic PREPARED folder, server) on a free loopback port; faults are set per test."""
    handler = functools.partial(_FaultyHandler, directory=str(synthetic_prepared.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.cut, server.stall, server.mute, server.release = set(), set(), set(), threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{synthetic_prepared.name}", server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def _one_line(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    text = " ".join(" ".join(lines).split())
    assert text.startswith("error:"), output
    return text


def test_connection_dropped_mid_shard_is_named_with_the_way_out(faulty, synthetic_prepared: Path,
                                                                tmp_path: Path) -> None:
    url, server = faulty
    name = read_manifest(synthetic_prepared)["splits"]["train"]["shards"][0]
    size = (synthetic_prepared / name).stat().st_size
    server.cut.add(name)
    dropped = f"{url}/{name}: the connection dropped after {size // 2:,} of {size:,} bytes; retry, or check the server"
    assert CliRunner().invoke(app, ["verify", url]).exit_code == 0  # sizes (HEAD) are right: only reading tells
    result = CliRunner().invoke(app, ["verify", url, "--checksums"])
    assert result.exit_code == 1 and dropped in _one_line(result.output), result.output
    with pytest.raises(DataError, match=dropped.replace(".", r"\.").replace("?", r"\?")):
        _epoch(url, "train", True)  # two loader workers: the worker's error arrives as itself
    result = CliRunner().invoke(app, ["train", url, "--model", "cnn-tiny", "--epochs", "1", "--batch-size", "32",
                                      "--num-workers", "0", "--no-mlflow", "--no-progress", "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 1 and dropped in _one_line(result.output), result.output
    server.cut = {"manifest.json"}  # read whole (not in blocks): the same line
    whole = (synthetic_prepared / "manifest.json").stat().st_size
    result = CliRunner().invoke(app, ["verify", url])
    assert result.exit_code == 1 and (f"{url}/manifest.json: the connection dropped after {whole // 2:,} of "
                                      f"{whole:,} bytes; retry") in _one_line(result.output), result.output
    server.cut.clear()
    assert [i for i, _ in _epoch(url, "val", False)] == [i for i, _ in _epoch(synthetic_prepared, "val", False)]


def test_stalled_server_ends_after_the_timeout(faulty, synthetic_prepared: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url, server = faulty
    assert http_timeout() == 60.0  # the documented default
    monkeypatch.setenv(TIMEOUT_ENV, "0.5")
    manifest = read_manifest(url)
    name = manifest["splits"]["val"]["shards"][0]
    server.stall.add(name)
    start = time.monotonic()
    with pytest.raises(DataError, match=rf"{url}/{name}: the server sent nothing for 0\.5 s after [\d,]+ of [\d,]+ "
                                        rf"bytes \(read timeout\); retry, or check the server; {TIMEOUT_ENV} sets"):
        list(iter_shard(f"{url}/{name}", int(manifest["image_size"])))
    assert time.monotonic() - start < 10  # bounded by the timeout, not by the server's 30 s stall
    server.mute.add("manifest.json")
    result = CliRunner().invoke(app, ["verify", url])
    assert result.exit_code == 1
    assert f"{url}/manifest.json: the server sent nothing for 0.5 s before answering" in _one_line(result.output)
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ConfigError, match=f"{TIMEOUT_ENV}='soon': expected a positive number of seconds"):
        http_timeout()
