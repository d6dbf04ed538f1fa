"""`chestxray serve`: one process (FastAPI + uvicorn) with a page to try a model and a JSON API.

GET / is the page (one HTML file, no build step; it takes several images at once, one request each); POST /predict
takes a multipart upload and returns every finding's probability against its stored threshold, with no decision for a
finding whose threshold is not validated (chestxray.evaluation.validity), the finding's measured quality, and
(?preview=true) the decoded picture and the model's input with the part of the picture it shows; POST /explain
returns a Grad-CAM overlay PNG for one finding;
GET /model gives the card (without the paths and machine details it holds), GET /health says the server is up; the
OpenAPI schema is at /openapi.json and /docs (Swagger UI served from the swagger-ui-bundle package, no CDN). Uploads
are checked by content, size and pixel count (chestxray.deploy.uploads) and kept in memory only, unless a
--keep-uploads folder is given. The model runs under one lock: requests queue, nothing races. Host and Origin checks
and the security headers are chestxray.deploy.security's (see docs/security.md).
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from chestxray.data.tasks import is_multiclass, probability_of
from chestxray.deploy.security import SecurityMiddleware, WebPolicy, page_csp
from chestxray.deploy.uploads import Limits, UploadError, decode_for_model, keep_upload
from chestxray.files import png_data_url
from chestxray.inference.engines import bundle_scorer
from chestxray.inference.ood import is_unusual
from chestxray.inference.predict import as_bundle, normalize_for_model

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
CALIBRATION_NOTE = ("Not calibrated for your site: the thresholds were chosen on this model's own validation data "
                    "({method}). Check them on labelled images from your site before relying on any decision. "
                    "Research use only, not a medical device.")
SITE_NOTE = ("Calibrated for site {site}: probabilities and thresholds from its site profile ({mode}; {method}). "
             "The profile was fitted on that site's images; elsewhere check it again. Research use only, not a "
             "medical device.")
OOD_WARNING = ("This image is unlike the images the model was trained on (in-distribution score {score:.3f}, at or "
               "below {rate:.1%}: at most that share of the model's validation images look this unusual). It may not be "
               "a frontal chest X-ray of the kind the model knows (a photograph, another body part or view, an "
               "inverted image); do not rely on its probabilities.")
MULTICLASS_NOTE = ("Not calibrated for your site: the predicted class is simply the most probable one (argmax; "
                   "thresholds do not apply) under a model trained on other data. Check it on labelled images from "
                   "your site before relying on it. Research use only, not a medical device.")
_FILE_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "minLength": 1,
                            "description": "PNG, JPEG or DICOM image (checked by content)"}}},
    "encoding": {"file": {"contentType": "image/png, image/jpeg, application/dicom"}}}}}}
_ERRORS = {code: {"description": text, "content": {"application/json": {"schema": {
    "type": "object", "properties": {"detail": {"type": "string"}}}}}}
    for code, text in ((400, "No file in the request"), (403, "Host or Origin not allowed (see docs/security.md)"),
                       (413, "Upload or image too large"), (415, "Not a PNG, JPEG or DICOM file"),
                       (422, "Damaged image, unknown finding or missing parameter"))}
PRIVATE_CARD_FIELDS = ("prepared", "run", "precision_reason")  # host paths and the CPU's feature flags
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}
PREVIEW_HELP = ("Also return the decoded picture (image.preview) and the model's input (image.input_preview) as PNG "
                "data URLs, together about 150 KB per image; the page asks for them, an API client rarely needs them")


def public_card(card: dict[str, Any]) -> dict[str, Any]:
    """The card as GET /model shows it to anyone: no filesystem path (anywhere in it), no CPU flags, and of the
    versions only chestxray's (library patch levels help an attacker, not a user)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if not _is_path(v)}
        if isinstance(value, list):
            return [clean(v) for v in value if not _is_path(v)]
        return value

    public = {k: v for k, v in card.items() if k not in PRIVATE_CARD_FIELDS}
    if isinstance(public.get("versions"), dict):
        public["versions"] = {k: v for k, v in public["versions"].items() if k == "chestxray"}
    return clean(public)


def _is_path(value: Any) -> bool:
    """An absolute filesystem path or file: URI (POSIX, Windows drive or UNC) in a string."""
    return isinstance(value, str) and bool(re.match(r"^(/|~/|[A-Za-z]:[\\/]|\\\\|file:)", value))


def _docs_assets() -> Path | None:
    """Swagger UI's files from the swagger-ui-bundle package (served locally), or None when it is not installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(str(swagger_ui_path))


def _preview(gray: np.ndarray, side: int = 512) -> str:
    """The decoded image as a PNG data URL (at most `side` px), so the page shows DICOMs too."""
    from PIL import Image

    image = Image.fromarray(gray)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return png_data_url(buffer.getvalue())


def favicon_png() -> bytes:
    """The page's icon: a 32 px PNG (a light cross on blue), drawn once, so browsers get no 404 for it."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (32, 32), (59, 111, 216))
    draw = ImageDraw.Draw(image)
    draw.rectangle((13, 5, 18, 26), fill=(255, 255, 255))
    draw.rectangle((6, 12, 25, 17), fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class ModelService:
    """The loaded bundle, its limits and a lock: scores and overlays for uploaded bytes."""

    def __init__(self, bundle: Any, limits: Limits, keep_uploads: Path | None = None, site: str | None = None,
                 engine: str = "auto") -> None:
        self.bundle = as_bundle(bundle)
        self.labels = list(self.bundle.labels)
        # the one scoring path, with the stored TTA, on the CPU: the cached ONNX graph unless engine is 'torch'
        self.scorer = bundle_scorer(self.bundle, device="cpu", engine=engine)
        if site is not None:  # the site profile's probabilities and thresholds (chestxray.inference.site)
            from chestxray.inference.site import load_site, site_scorer

            self.scorer = site_scorer(self.scorer, load_site(self.bundle.path, site, self.bundle.card))
        self.card = self.scorer.card
        self.limits, self.keep_uploads = limits, keep_uploads
        self.lock = threading.Lock()
        self.decodes = threading.BoundedSemaphore(limits.max_decodes)  # decoding memory is bounded, not per request

    def _decode(self, data: bytes, name: str) -> Any:
        with self.decodes:
            decoded = decode_for_model(data, name, int(self.card["image_size"]), self.card.get("resize", "pad"),
                                       self.limits)
        if self.keep_uploads is not None:
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            keep_upload(data, name, self.keep_uploads, stamp)
        return decoded

    def predict(self, data: bytes, name: str, preview: bool = False) -> dict[str, Any]:
        """Probabilities per finding, the stored thresholds and decisions (none where a threshold is not validated),
        each finding's measured quality, and with `preview` the picture and the model input as data URLs."""
        decoded = self._decode(data, name)
        with self.lock:
            scores, typical = self.scorer.log_odds_with_ood(decoded.square[None])
        odds, probs = scores[0], probability_of(scores[0]).tolist()
        multiclass = is_multiclass(self.card.get("task"))
        predicted = self.labels[int(np.argmax(odds))] if multiclass else None  # multi-class: argmax, no thresholds
        findings = [self._finding(n, p, z, predicted) for n, p, z in zip(self.labels, probs, odds)]
        left, top, right, bottom = decoded.window
        image: dict[str, Any] = {"width": decoded.shape[1], "height": decoded.shape[0],
                                 "resize": self.card.get("resize", "pad"),
                                 "input_window": {"left": round(left, 6), "top": round(top, 6),
                                                  "right": round(right, 6), "bottom": round(bottom, 6)}}
        if preview:
            image.update(preview=_preview(decoded.gray), input_preview=_preview(decoded.square))
        return {"file": name, "model": self.card["architecture"], "task": self.card.get("task", "multilabel"),
                "image": image, "findings": findings, "thresholds_stored": bool(self.card.get("thresholds")),
                "note": self.note(), "site": self.card.get("site"), "in_distribution": self._typicality(typical),
                **({"predicted_class": predicted} if multiclass else {})}

    def _finding(self, name: str, prob: float, odds: float, predicted: str | None) -> dict[str, Any]:
        """One finding's row: probability, threshold, decision (None without a validated threshold; on log-odds, as
        every scoring path decides), why, quality."""
        from chestxray.evaluation.validity import quality_text

        threshold = (self.card.get("thresholds") or {}).get(name)
        decide = (self.scorer.threshold_logits or {}).get(name)
        known = {} if self.card.get("site") else (self.card.get("findings") or {}).get(name, {})
        validated = known.get("validated")  # None: a card from before the findings block
        if predicted is not None:
            positive: bool | None = name == predicted
        elif decide is None or validated is False:
            positive = None
        else:
            positive = bool(odds >= decide)
        return {"name": name, "probability": round(prob, 6), "threshold": threshold, "positive": positive,
                "validated": validated, "why": known.get("why"),
                "quality": quality_text(known) if known else None}

    def note(self) -> str:
        """What the probabilities and thresholds mean here: the site profile in use, or that there is none."""
        if self.card.get("site"):
            return SITE_NOTE.format(site=self.card["site"], mode=self.card.get("site_mode"),
                                    method=self.card.get("threshold_method"))
        if is_multiclass(self.card.get("task")):
            return MULTICLASS_NOTE
        return CALIBRATION_NOTE.format(method=self.card.get("threshold_method") or "no thresholds stored")

    def _typicality(self, typical: np.ndarray | None) -> dict[str, Any] | None:
        """The in-distribution score of the upload, and a warning when it is unusual (None: no OOD reference)."""
        if typical is None:
            return None
        score, rate = float(typical[0]), float(self.scorer.false_alarm)
        unusual = bool(is_unusual(score, rate))
        return {"score": round(score, 6), "unusual": unusual, "false_alarm": rate,
                "warning": OOD_WARNING.format(score=score, rate=rate) if unusual else None}

    def explain(self, data: bytes, name: str, finding: str) -> bytes:
        """A Grad-CAM overlay PNG of one finding on the model's input image."""
        from chestxray.explain.attribution import attribute, render_overlay

        if finding not in self.labels:
            raise UploadError(422, f"unknown finding {finding!r}; this model knows {self.labels}")
        square = self._decode(data, name).square
        inputs = normalize_for_model(torch.from_numpy(square)[None, None], self.card)
        target = self.labels.index(finding)
        with self.lock, torch.enable_grad():
            prob = float(self.scorer.score(square[None])[0, target])
            heat = attribute(self.bundle.net, inputs.clone().requires_grad_(True), target, "gradcam")[0]
        picture = render_overlay(square, heat, f"{finding} p={prob:.2f} (Grad-CAM)")
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return buffer.getvalue()


def create_app(bundle: Any, limits: Limits | None = None, keep_uploads: str | Path | None = None,
               policy: WebPolicy | None = None, site: str | None = None, engine: str = "auto") -> FastAPI:
    """The FastAPI app serving one bundle (folder, run folder or loaded Bundle) under a WebPolicy (default: loopback
    names only); `site` names a site profile stored beside the bundle (its probabilities and thresholds); `engine`
    scores (chestxray.inference.engines; Grad-CAM overlays always use PyTorch)."""
    from fastapi.openapi.docs import get_swagger_ui_html

    service = ModelService(bundle, limits or Limits(), Path(keep_uploads) if keep_uploads else None, site, engine)
    app = FastAPI(title="chestxray", version=str(service.card.get("versions", {}).get("chestxray", "")),
                  description=f"Try the {service.card['architecture']} model: probabilities per finding and "
                              "Grad-CAM overlays for uploaded chest X-rays. " + service.note(),
                  docs_url=None, redoc_url=None)
    page_html = PAGE.read_text(encoding="utf-8")
    assets = _docs_assets()
    docs_html = get_swagger_ui_html(
        openapi_url="/openapi.json", title="chestxray API", swagger_js_url="/docs-assets/swagger-ui-bundle.js",
        swagger_css_url="/docs-assets/swagger-ui.css", swagger_favicon_url="/docs-assets/favicon-32x32.png",
    ).body.decode() if assets is not None else None
    policy = policy or WebPolicy()
    csp = {"/": page_csp(page_html), **({"/docs": page_csp(docs_html, "'self' data:")} if docs_html else {})}
    app.add_middleware(SecurityMiddleware, policy=WebPolicy(policy.hosts, policy.origins, {**csp, **policy.csp}))

    @app.exception_handler(UploadError)
    async def _refused(request: Request, exc: UploadError) -> JSONResponse:
        log.info("refused upload: %s", exc.reason)
        return JSONResponse({"detail": exc.reason}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """One line in 'detail' (a string, as every other refusal and the schema say), not FastAPI's list."""
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(problems)[:500] or "invalid request"}, status_code=422)

    if docs_html is not None:
        @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
        def docs() -> HTMLResponse:
            return HTMLResponse(docs_html)

        @app.get("/docs-assets/{name}", include_in_schema=False)
        def docs_asset(name: str) -> Response:
            if name not in DOCS_ASSETS:
                return JSONResponse({"detail": "not found"}, status_code=404)
            return FileResponse(assets / name, media_type=DOCS_ASSETS[name],
                                headers={"cache-control": "public, max-age=86400"})

    async def read_upload(request: Request) -> tuple[bytes, str]:
        """The one uploaded file of a multipart body, read in memory with the byte limit enforced while reading."""
        cap = service.limits.max_bytes + 64 * 1024  # room for the multipart framing
        if int(request.headers.get("content-length") or 0) > cap:
            raise UploadError(413, f"upload over the {service.limits.max_bytes / 1e6:.0f} MB limit")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > cap:
                    raise UploadError(413, f"upload over the {service.limits.max_bytes / 1e6:.0f} MB limit")
        except ClientDisconnect:  # the client went away, or sent too slowly and was cut off: nobody reads an answer
            raise UploadError(408, "the upload did not arrive in full") from None
        if "multipart/form-data" not in request.headers.get("content-type", ""):
            raise UploadError(400, "send the image as multipart/form-data with a field named 'file'")

        async def once():
            yield bytes(body)

        parser = MultiPartParser(request.headers, once(), max_files=1, max_fields=8, max_part_size=cap)
        parser.spool_max_size = cap  # keep the file part in memory: nothing is written to disk
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise UploadError(400, f"malformed multipart body ({exc.message})") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise UploadError(400, "no file in the request; send it in a multipart field named 'file'")
        data = await upload.read()
        return data, upload.filename or "upload"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(page_html)

    icon = favicon_png()

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(icon, media_type="image/png", headers={"cache-control": "public, max-age=86400"})

    @app.get("/health", summary="Liveness: the server answers and the model is loaded")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": service.card["architecture"], "labels": len(service.labels)}

    @app.get("/model", summary="The model card: architecture, labels, thresholds, preprocessing, metrics")
    def model() -> dict[str, Any]:
        return public_card(service.card)

    @app.post("/predict", summary="Probability per finding for one uploaded image", openapi_extra=_FILE_BODY,
              responses=_ERRORS, description="Every finding's probability, its stored threshold and the decision; "
              "a finding whose threshold is not validated (too few patients on the validation split) has "
              "positive: null, validated: false and the reason in why. quality gives the finding's AUROC on the "
              "evaluated split with its interval (or why there is none). image.input_window is the part of the "
              "picture the model sees (fractions; the whole image for --resize stretch or pad, the centre square for "
              "crop), image.resize which of them.")
    async def predict(request: Request, preview: bool = Query(False, description=PREVIEW_HELP)) -> dict[str, Any]:
        data, name = await read_upload(request)
        return await run_in_threadpool(service.predict, data, name, preview)

    @app.post("/explain", summary="Grad-CAM overlay (PNG) of one finding for one uploaded image",
              openapi_extra=_FILE_BODY, responses={200: {"content": {"image/png": {}}}, **_ERRORS},
              response_class=Response)
    async def explain(request: Request, finding: str = Query(
            ..., description="One of the model's findings (see GET /model)",
            json_schema_extra={"enum": service.labels})) -> Response:
        data, name = await read_upload(request)
        png = await run_in_threadpool(service.explain, data, name, finding)
        return Response(png, media_type="image/png")

    return app


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    return host in ("localhost", "::1") or host.startswith("127.")


def serve(bundle: Any, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
          keep_uploads: str | Path | None = None, log_level: str = "warning", allowed_hosts: tuple[str, ...] = (),
          allowed_origins: tuple[str, ...] = (), read_timeout: float = 30.0, max_connections: int = 64,
          site: str | None = None, engine: str = "auto") -> None:
    """Run the app with uvicorn until interrupted (one process).

    Requests must arrive within `read_timeout` seconds each (chestxray.deploy.http_limits); beyond
    `max_connections` open connections new requests get 503 at once; the Host and Origin checks accept the loopback
    names, `host` itself and `allowed_hosts` / `allowed_origins` (chestxray.deploy.security).
    """
    import uvicorn

    from chestxray.deploy.http_limits import deadline_protocol
    from chestxray.deploy.security import allowed_hosts as hosts_for

    if not is_loopback(host):
        log.warning("listening on %s:%d with NO authentication: anyone who can reach it can send images and read "
                    "the model card; put it behind an authenticating proxy, or use the default --host 127.0.0.1",
                    host, port)
    policy = WebPolicy(hosts_for(host, allowed_hosts), tuple(allowed_origins))
    uvicorn.run(create_app(bundle, limits, keep_uploads, policy, site, engine), host=host, port=port, log_level=log_level,
                access_log=False, http=deadline_protocol(read_timeout), ws="none", limit_concurrency=max_connections,
                timeout_keep_alive=5, server_header=False)
