from django.apps import AppConfig


class ModelsSrvConfig(AppConfig):
    name = "models_srv"
    verbose_name = "Models"
