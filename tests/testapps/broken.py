"""A module that raises while it is imported: the gateway must report where."""

def _helper():
    raise ZeroDivisionError("this module is broken on purpose")


_helper()
