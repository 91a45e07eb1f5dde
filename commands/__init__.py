"""The Django face of valdimport: management commands that wrap valdimport.py."""
