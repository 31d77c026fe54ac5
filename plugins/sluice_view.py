"""The "Sluice" view in the Airflow UI: champion, gate decisions, drift, realised performance, freshness.

An Airflow 3 plugin with two parts:

* an external view (a nav entry, top level) that the UI renders in an iframe at
  ``/plugin/sluice``, pointing at
* a FastAPI app mounted by the API server at ``/sluice``:

  - ``GET /sluice/``: the page (HTML rendered server-side, charts as inline SVG);
  - ``GET /sluice/api/overview``: the same data as JSON;
  - ``GET /sluice/cards/{version}``: the model card of a version (its MLflow card with its
    shadow results up to date), rendered from Markdown with raw HTML off;
  - ``GET /sluice/reports/{ds}/report.html`` (and ``report.json``): a day's drift report,
    read from the object store (file:// or s3://); a ``ds`` that is not a date is a 400,
    anything else is a 404: nothing else under the lake is ever served.

A plugin app is mounted beside the core API and inherits none of its dependencies,
so every route here authenticates itself with the core API's own dependency
(``GetUserDep``: the JWT of the login cookie or a bearer token; 401 without one, 403
for a bad one) and then asks the auth manager whether the user may read DAGs (403
otherwise). What the view shows is gathered and rendered by ``sluice.ui.view``; this file
only routes. Nothing heavy is imported and nothing is read when Airflow loads the
plugin (the scheduler and DAG processor load plugins too): the app is built on first
use, in the API server.

No ``from __future__ import annotations`` here: FastAPI resolves the annotations of
the routes below, which are defined inside ``create_app``, at definition time.
"""

import contextlib
import functools
import logging
import threading
from typing import Any

from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)

URL_PREFIX = "/sluice"

ICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#2563eb" '
    'stroke-width="2" stroke-linecap="round" stroke-linejoin="round">'
    '<path d="M3 21V5h4v16M17 21V5h4v16"/><path d="M7 9h10M7 15h10"/>'
    '<path d="M9 12c1-1 2-1 3 0s2 1 3 0"/></svg>'
)


def create_app() -> Any:
    """The FastAPI app of the view; every route requires a logged-in user who may read DAGs."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
    from airflow.api_fastapi.core_api.security import GetUserDep
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    def require_reader(user: GetUserDep) -> BaseUser:
        """Authenticated (by the core API's dependency) and allowed to read DAGs."""
        if not get_auth_manager().is_authorized_dag(method="GET", user=user):
            raise HTTPException(status_code=403, detail="Forbidden: the Sluice view needs read access to DAGs")
        return user

    def settings(use_case: str | None = None) -> Any:
        from sluice.settings import load_settings
        from sluice.ui import view

        try:
            return view.for_use_case(load_settings(), use_case)
        except view.UnknownUseCase as exc:
            raise HTTPException(status_code=404, detail="No such use case") from exc

    def warm_up() -> None:
        try:
            from sluice.ui import view

            view.warm_up(settings())
        except Exception:  # best effort: a request that needs it tries again and shows its error
            log.warning("sluice view: warm-up failed", exc_info=True)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        # The API server enters the lifespan of every mounted plugin app when it starts.
        threading.Thread(target=warm_up, name="sluice-view-warm-up", daemon=True).start()
        yield

    app = FastAPI(
        title="Sluice view",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # On the app, so that no route of it can be added without the check.
        dependencies=[Depends(require_reader)],
    )

    # Security headers: the page runs no script and is only framed by the Airflow UI itself.
    page_headers = {
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        "frame-ancestors 'self'; base-uri 'none'; form-action 'none'",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
        "Referrer-Policy": "same-origin",
    }

    @app.get("/", response_class=HTMLResponse)
    def page(use_case: str | None = None) -> HTMLResponse:
        from sluice.ui import view

        return HTMLResponse(view.render_page(view.overview(settings(use_case))), headers=page_headers)

    @app.get("/api/overview")
    def overview(use_case: str | None = None) -> JSONResponse:
        from sluice.ui import view

        return JSONResponse(view.overview(settings(use_case)), headers={"Cache-Control": "no-store"})

    @app.get("/reports/{ds}/{name}")
    def report(ds: str, name: str, use_case: str | None = None) -> Response:
        from sluice.ui import view

        try:
            body = view.read_report(settings(use_case), ds, name)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        except view.ReportNotFound as exc:  # the reason (with lake paths) goes to the log, not to the client
            log.info("sluice view: no report for %r/%r: %s", ds, name, exc)
            raise HTTPException(status_code=404, detail="No such drift report") from exc
        return Response(
            body,
            media_type=view.REPORT_FILES[name],
            headers={
                # The report (Evidently's HTML and script) runs in an opaque origin: it can
                # render, but cannot reach the Airflow API with the user's cookie.
                "Content-Security-Policy": "sandbox allow-scripts allow-popups allow-downloads",
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private, max-age=300",
            },
        )

    @app.get("/cards/{version}", response_class=HTMLResponse)
    def card(version: str, use_case: str | None = None) -> HTMLResponse:
        from sluice.ui import view

        try:
            data = view.model_card(settings(use_case), version)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        except view.CardNotFound as exc:
            log.info("sluice view: no model card %r: %s", version, exc)
            raise HTTPException(status_code=404, detail="No such model card") from exc
        return HTMLResponse(view.render_card(data), headers=page_headers)

    @app.get("/icon.svg")
    def icon() -> Response:
        return Response(ICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "private, max-age=3600"})

    return app


@functools.cache
def app() -> Any:
    return create_app()


class SluiceViewPlugin(AirflowPlugin):
    name = "sluice_view"
    external_views = [
        {
            "name": "Sluice",
            # Relative (no leading slash): resolved against the UI's base URL, like the app's mount.
            "href": "sluice/",
            "url_route": "sluice",
            "destination": "nav",
            "icon": "sluice/icon.svg",
            "nav_top_level": True,
        }
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """Built on first use: only the API server (and `airflow plugins`) asks for it."""
        return [{"app": app(), "url_prefix": URL_PREFIX, "name": "Sluice view"}]
