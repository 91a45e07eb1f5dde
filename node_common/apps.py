from django.apps import AppConfig


class NodeCommonConfig(AppConfig):
    name = "node_common"
    verbose_name = "VALD node: species, references, line lists, import runs"
    default_auto_field = "django.db.models.AutoField"
