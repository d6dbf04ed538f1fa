"""ImageNet downloads against a loopback HTTP server the test starts (it counts requests): download with progress
→ cached → no second download; a wrong hash or a cut-off download → clear error, nothing cached; offline → no request.
The server is reached through the documented mirror setting (CHESTXRAY_WEIGHTS_MIRROR / --mirror)."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.errors import ModelError
from chestxray.models import build_model, registry
from chestxray.models.architectures import _CNN_BLOCKS, SmallCNN


class WeightsServer:
    """Serves files from a dict on 127.0.0.1 and counts every request; `cut` files announce more bytes than sent."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in server.cut else body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> WeightsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WeightsServer]:
    """A running server, an empty $TORCH_HOME, downloads allowed and pointed at the server through the mirror."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("CHESTXRAY_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with WeightsServer() as running:
        monkeypatch.setenv("CHESTXRAY_WEIGHTS_MIRROR", running.url)
        yield running


def _probe_model(monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, torch.Tensor], bytes]:
    """Register (for this test only) a tiny model whose published file is named with its SHA-256 prefix."""
    torch.manual_seed(0)
    state = SmallCNN(1000, 3, width=8, dropout=0.0).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    body = buffer.getvalue()
    file_name = f"probe-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the registration ends with the test
    monkeypatch.setattr(registry, "_LAZY", dict(registry._LAZY))  # a lazy entry resolved meanwhile is not lost
    registry.register_model("download-probe", image_size=32, stem="features.0.0", head="head.4", blocks=_CNN_BLOCKS,
                            normalization="gray", weights_url=f"https://weights.example.org/models/{file_name}")(
        lambda n, c: SmallCNN(n, c, width=8, dropout=0.0))
    return file_name, state, body


def test_download_progress_cache_and_no_second_download(server: WeightsServer, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    file_name, state, body = _probe_model(monkeypatch)
    server.files[f"/models/{file_name}"] = body
    net = build_model("download-probe", num_labels=2, pretrained="imagenet")
    assert server.requests == [f"/models/{file_name}"]
    assert "100%" in capfd.readouterr().err  # torch.hub's progress bar
    cached = tmp_path / "torch" / "hub" / "checkpoints" / file_name
    assert cached.read_bytes() == body
    assert torch.equal(net.features[1][0].weight, state["features.1.0.weight"])
    # equal channel statistics ('gray'): the exact fold is the plain sum of the RGB kernels
    assert torch.equal(net.features[0][0].weight, state["features.0.0.weight"].sum(1, keepdim=True))
    build_model("download-probe", num_labels=2, pretrained="imagenet")
    result = CliRunner().invoke(app, ["weights", "fetch", "download-probe", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert len(server.requests) == 1  # the cache answered both
    listing = CliRunner().invoke(app, ["weights", "list"])
    assert listing.exit_code == 0 and any(line.split()[:2] == ["download-probe", "yes"]
                                          for line in listing.output.splitlines())


def test_wrong_hash_or_cut_download_leaves_nothing(server: WeightsServer, tmp_path: Path) -> None:
    server.files["/models/resnet18-f37072fd.pth"] = b"not the published file" * 100
    with pytest.raises(ModelError, match=r"resnet18-f37072fd\.pth: the download failed its SHA-256 check.*nothing"):
        build_model("resnet18", num_labels=2, pretrained="imagenet")
    server.cut.add("/models/densenet121-a639ec97.pth")
    server.files["/models/densenet121-a639ec97.pth"] = b"x" * 4096
    result = CliRunner().invoke(app, ["weights", "fetch", "densenet121", "--no-progress"])
    assert result.exit_code == 1 and "download failed" in result.output and "Traceback" not in result.output
    assert len(server.requests) == 2
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert list(folder.iterdir()) == []  # no file, no partial


def test_offline_sends_no_request(server: WeightsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    file_name, _, body = _probe_model(monkeypatch)
    server.files[f"/models/{file_name}"] = body
    with pytest.raises(ModelError, match=rf"not in the local cache and downloads are off.*put {file_name}"):
        build_model("download-probe", num_labels=2, pretrained="imagenet", offline=True)
    monkeypatch.setenv("CHESTXRAY_OFFLINE", "1")
    with pytest.raises(ModelError, match="downloads are off"):
        build_model("download-probe", num_labels=2, pretrained="imagenet")
    assert server.requests == []
