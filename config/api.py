from ninja import NinjaAPI
from ninja.security import django_auth

from annotation.api import router as annotation_router
from config.auth import TokenAuth

api = NinjaAPI(
    title="Prefloop API",
    version="1",
    description="Projects, item imports and judgments. Authenticate with `Authorization: Bearer <token>`.",
    auth=[TokenAuth(), django_auth],
    urls_namespace="api",
)
api.add_router("/", annotation_router)
