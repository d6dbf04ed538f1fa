"""PREPARED data on a web server: a real nginx (Debian's package) serves a prepared folder on a free loopback port;
one epoch streamed from the URL sees exactly the samples, in the same order, as from the local folder; train,
evaluate and verify take the URL; network errors name the URL and the shard."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from chestxray.cli import app
from chestxray.data.datamodule import ChestXrayDataModule
from chestxray.data.shards import iter_shard, read_manifest, shard_size
from chestxray.data.verify import verify_prepared
from chestxray.errors import DataError
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
