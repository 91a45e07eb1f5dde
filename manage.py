#!/usr/bin/env python3
"""Django's command-line utility for this project (settings_dev unless DJANGO_SETTINGS_MODULE is set)."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings_dev")
    from django.core.management import execute_from_command_line

    from valdimport import ValdImportError

    try:
        execute_from_command_line(sys.argv)
    except ValdImportError as error:  # a bad DATABASE_URL, found while loading settings_dev
        print(f"manage.py: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
