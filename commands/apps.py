from django.apps import AppConfig


class ValdImportCommandsConfig(AppConfig):
    name = "commands"
    label = "valdimport"
    verbose_name = "VALD import commands"
