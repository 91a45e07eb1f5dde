from django.apps import AppConfig


class NodeAtomConfig(AppConfig):
    name = "node_atom"
    verbose_name = "VALD node: levels and transitions"
    default_auto_field = "django.db.models.AutoField"
