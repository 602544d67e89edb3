"""(being written)"""


def routes():
    return []
