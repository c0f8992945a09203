"""The first user, created once (a pre-start step after the migrations)."""

from __future__ import annotations

from models import User, engine
from sqlalchemy import select
from sqlalchemy.orm import Session

with Session(engine()) as session:
    if session.scalar(select(User).where(User.email == "admin@example.com")) is None:
        session.add(User(email="admin@example.com"))
        session.commit()
        print("created the first user")
