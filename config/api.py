from ninja import NinjaAPI
from ninja.security import django_auth

from annotation.api import router as annotation_router
from config.auth import TokenAuth
from models_srv.api import router as models_router

api = NinjaAPI(
    title="Prefloop API",
    version="1",
    description="Projects, item imports and judgments. Authenticate with `Authorization: Bearer <token>`.",
    auth=[TokenAuth(), django_auth],
    urls_namespace="api",
)
api.add_router("/", annotation_router)
api.add_router("/", models_router)
