"""`chestxray serve`: the web page and JSON API for one model, on loopback unless told otherwise."""

from __future__ import annotations

from pathlib import Path

import typer

from chestxray.cli import app
from chestxray.cli.common import err_console, friendly


@app.command(help="Serve a model: a web page to drop a PNG/JPEG/DICOM and see every finding's probability against "
             "its threshold with a Grad-CAM overlay, and a JSON API (POST /predict, POST /explain, GET /model, "
             "GET /health; OpenAPI at /docs). Uploads stay in memory unless --keep-uploads is given. No "
             "authentication: it listens on loopback unless --host says otherwise; requests whose Host is not a "
             "name of the server, and cross-origin uploads, get 403 (docs/security.md says how to run it behind a "
             "proxy)."
             "\n\nExample: chestxray serve runs/densenet121 --port 8000"
             "\n\nExample (behind a proxy at https://xray.example.org): chestxray serve runs/densenet121 "
             "--allowed-host xray.example.org")
@friendly
def serve(
    bundle: Path = typer.Argument(..., help="Bundle folder or run folder (holding bundle/)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    keep_uploads: Path = typer.Option(None, "--keep-uploads", help="Store every upload in this folder."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest upload accepted, in MB."),
    max_megapixels: float = typer.Option(25.0, "--max-megapixels", help="Largest image accepted (width x height)."),
    allowed_host: list[str] = typer.Option([], "--allowed-host", help="Another name clients use for this server "
                                           "(repeatable; '*.example.org' patterns; loopback names and --host are "
                                           "always allowed)."),
    allowed_origin: list[str] = typer.Option([], "--allowed-origin", help="Another origin whose pages may send "
                                             "uploads, e.g. https://portal.example.org (repeatable)."),
    read_timeout: float = typer.Option(30.0, "--read-timeout", help="Seconds a client has to send one whole "
                                       "request (headers and upload); slower ones get 408."),
    max_connections: int = typer.Option(64, "--max-connections", help="Open connections served at once; beyond "
                                        "that new requests get 503."),
    site: str = typer.Option(None, "--site", help="Site profile made by 'chestxray calibrate' (a name under "
                             "RUN/sites/, or its folder): the site's probabilities and thresholds."),
    engine: str = typer.Option("auto", "--engine", help="What scores uploads: auto (the bundle's cached ONNX graph "
                               "through onnxruntime, PyTorch where it cannot be exported), onnxruntime or torch."),
) -> None:
    from chestxray.cli import checks

    checks.engine(engine)
    checks.model_source(bundle)
    checks.at_least("--port", port, 1, 65535)
    checks.at_least("--max-upload-mb", max_upload_mb, 0.001)
    checks.at_least("--max-megapixels", max_megapixels, 0.001)
    checks.at_least("--read-timeout", read_timeout, 1)
    checks.at_least("--max-connections", max_connections, 1)
    from chestxray.deploy.serve import is_loopback
    from chestxray.deploy.serve import serve as run_server
    from chestxray.deploy.uploads import Limits

    limits = Limits(max_bytes=int(max_upload_mb * 1e6), max_pixels=int(max_megapixels * 1e6))
    err_console.print(f"serving {bundle} on http://{'localhost' if is_loopback(host) else host}:{port}/ "
                      "(Ctrl+C stops)" + (f"; keeping uploads in {keep_uploads}" if keep_uploads else
                                          "; uploads are not stored"), highlight=False, soft_wrap=True)
    run_server(bundle, host=host, port=port, limits=limits, keep_uploads=keep_uploads,
               allowed_hosts=tuple(allowed_host), allowed_origins=tuple(allowed_origin), read_timeout=read_timeout,
               max_connections=max_connections, site=site, engine=engine)


@app.command(help="Start the MLflow UI (the real `mlflow server`) on the project's store: runs/mlflow.db (or a "
             "legacy ./mlruns), the store a run folder names, a study's or tune's folder (OUT/runs/mlflow.db, "
             "OUT/trials/mlflow.db), a .db file or any tracking URI, and print each experiment's training-runs page "
             "(open that link: it shows the runs table, where the bare address opens MLflow's GenAI Traces page). Needs the full mlflow: pip install 'chestxray\\[ui]'."
             "\n\nExample: chestxray ui --store demo-output/mlflow.db --port 5000"
             "\n\nExample (a tune study): chestxray ui --store runs/tune1")
@friendly
def ui(
    store: str = typer.Option(None, "--store", help="Tracking URI, SQLite .db file, run folder, study or tune "
                              "folder, or mlruns folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(5000, "--port", help="TCP port."),
) -> None:
    from chestxray.cli import checks

    checks.at_least("--port", port, 1, 65535)
    checks.mlflow_store(store)
    from chestxray.deploy.mlflow_ui import run_ui, store_uri, training_pages

    uri = store_uri(store)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    err_console.print(f"MLflow UI for {uri} on {base}/ (Ctrl+C stops)", highlight=False, soft_wrap=True)
    for name, url, runs in training_pages(uri, base):
        err_console.print(f"  training runs of {name} ({runs} run{'s' if runs != 1 else ''}): {url}", highlight=False,
                          soft_wrap=True)
    raise typer.Exit(run_ui(store, host, port))
