"""An ASGI app that answers with the number of users in its database."""

from __future__ import annotations

from typing import Any

from models import User, engine
from sqlalchemy import func, select
from sqlalchemy.orm import Session

database = engine()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    with Session(database) as session:
        users = session.scalar(select(func.count()).select_from(User))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": f"users: {users}".encode()})
