"""Django settings for development and the standalone CLI.

SQLite in the working directory by default; DATABASE_URL selects another
database (postgres://USER@HOST:PORT/NAME, mysql://USER@HOST:PORT/NAME).
VALD_NODE_ID (default vald) is the node id in the XSAMS source ids of the
references. A node uses its own settings through DJANGO_SETTINGS_MODULE instead.
"""
import os

from valdimport import database_settings

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "valdimport-development-only")
DEBUG = False  # with DEBUG on, Django would keep every query of an import in memory
ALLOWED_HOSTS = []
INSTALLED_APPS = ["node_common", "node_atom", "commands"]
DATABASES = {"default": database_settings(os.environ.get("DATABASE_URL", "sqlite:///vald.sqlite3"))}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
TIME_ZONE = "UTC"
VALD_NODE_ID = os.environ.get("VALD_NODE_ID", "vald")
