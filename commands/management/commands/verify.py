from valdimport import OperationCommand


class Command(OperationCommand):
    command = "verify"
