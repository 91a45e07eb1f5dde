from valdimport import ImportCommand


class Command(ImportCommand):
    command = "import-hfs"
