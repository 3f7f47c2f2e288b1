"""The one exception the embedded launcher raises."""

from __future__ import annotations


class InfraError(Exception):
    """A component could not be started; the message is one operator-facing line.

    The line starts with the component name and says what to do, for example
    ``postgres: port 15432 is already in use — stop whatever holds it or set ITSMESH_PG_PORT / DATABASE_URL``.
    """

    component: str

    def __init__(self, component: str, problem: str) -> None:
        super().__init__(f"{component}: {problem}")
        self.component = component
