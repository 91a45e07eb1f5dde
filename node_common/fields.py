"""Model fields shared by the node apps."""
from django.db import models


class CaseSensitiveCharField(models.CharField):
    """A CharField that compares case-sensitively on every engine.

    PostgreSQL and SQLite compare text case-sensitively by default; MySQL's
    default utf8mb4 collations do not, so reference keys such as ``Wa`` and
    ``WA`` would collide there. On MySQL the column gets a binary collation.
    """

    def db_parameters(self, connection):
        params = super().db_parameters(connection)
        if connection.vendor == "mysql":
            params["collation"] = "utf8mb4_bin"
        return params
