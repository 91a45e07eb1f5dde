"""Settings for the test suite: one alias per engine.

``default`` is SQLite; ``postgresql`` and ``mysql`` are the servers named by
VALDIMPORT_TEST_POSTGRES_URL / VALDIMPORT_TEST_MYSQL_URL (defaults: the local
servers). A server that does not answer is left out and its tests are
skipped, except with CI=true, where it stays in and its tests fail.
"""
import os
import tempfile

from valdimport import ValdImportError, database_settings

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SERVER_URLS = {
    "postgresql": os.environ.get("VALDIMPORT_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
    "mysql": os.environ.get("VALDIMPORT_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}
UNAVAILABLE = {}  # alias -> why its tests are skipped, and what to install
INSTALL = {
    "postgresql": "install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; ./scripts/test "
                  "starts it) or set VALDIMPORT_TEST_POSTGRES_URL",
    "mysql": "install MariaDB or MySQL (Debian/Ubuntu: apt-get install mariadb-server; "
             "./scripts/test starts it) or set VALDIMPORT_TEST_MYSQL_URL",
}

LOGIN_REFUSED = ("authentication failed", "no password supplied", "Access denied", "role ")
LOGIN = {
    "postgresql": "set VALDIMPORT_TEST_POSTGRES_URL to a user that may create databases, with its "
                  "password",
    "mysql": "set VALDIMPORT_TEST_MYSQL_URL to a user that may create databases, with its password",
}


def _answers(alias, config):
    try:
        if alias == "postgresql":
            import psycopg2
            psycopg2.connect(host=config["HOST"], port=config["PORT"] or 5432, user=config["USER"],
                             password=config["PASSWORD"], dbname=config["NAME"],
                             connect_timeout=3).close()
        else:
            import MySQLdb
            MySQLdb.connect(host=config["HOST"], port=int(config["PORT"] or 3306), user=config["USER"],
                            password=config["PASSWORD"], connect_timeout=3).close()
        return True
    except Exception as error:  # any failure means: not usable here
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        where = f"{config['HOST']}:{config['PORT']}"
        if any(word in reason for word in LOGIN_REFUSED):  # the server is there
            UNAVAILABLE[alias] = (f"the {alias} server at {where} refused the login ({reason}): "
                                  f"{LOGIN[alias]} (see docs/development.md)")
        else:
            UNAVAILABLE[alias] = f"no {alias} server at {where} ({reason}): {INSTALL[alias]}"
        return False


SECRET_KEY = "valdimport-tests"
DEBUG = False
INSTALLED_APPS = ["node_common", "node_atom", "commands"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True

_sqlite = os.path.join(tempfile.gettempdir(), f"valdimport_test_{os.getpid()}.sqlite3")
DATABASES = {"default": database_settings(f"sqlite:///{_sqlite}")}
DATABASES["default"]["TEST"] = {"NAME": _sqlite}
for _alias, _url in SERVER_URLS.items():
    try:
        _config = database_settings(_url)
    except ValdImportError as _error:  # its driver is missing
        if CI:
            raise
        UNAVAILABLE[_alias] = str(_error)
        continue
    if CI or _answers(_alias, _config):
        _config["TEST"] = {"NAME": f"valdimport_test_{os.getpid()}", "DEPENDENCIES": []}
        if _alias == "mysql":
            _config["TEST"]["CHARSET"] = "utf8mb4"
        DATABASES[_alias] = _config
