"""A route of examples/hot-server in Python (componentize-py).

Built with guests/build: the component carries its own interpreter, so
every version is a disposable interpreter of its own.
"""

import wit_world

VERSION = "python v1"


class WitWorld(wit_world.WitWorld):
    def handle(self, method: str, path: str) -> tuple[int, str]:
        return (200, f"hello from {VERSION}: {method} {path}\n")
