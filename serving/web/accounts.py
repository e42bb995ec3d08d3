"""Web accounts and tags in SQL (SQLAlchemy): SQLite under the home by default, any URL by config.

A password is stored only as an argon2id hash (argon2-cffi's defaults, RFC 9106's
second recommended parameter set) and re-hashed on sign-in when those defaults change.
A new account's user id comes from ``web.account_id_base`` up and is checked against
the published dataset users, so an account never writes ratings as a dataset user.

Example::

    accounts = AccountStore("sqlite:///var/web/accounts.db", id_base=1_000_000_000)
    acct = accounts.create("ada", "correct horse", age_bucket=25, gender="F")
    accounts.verify("ada", "correct horse").user_id   # 1000000000
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import BigInteger, Integer, String, Text, UniqueConstraint, create_engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from pipeline.schemas import AGE_BUCKETS, GENRES, OCCUPATIONS

USERNAME = re.compile(r"^[A-Za-z0-9_.-]{3,32}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 256
MAX_TAG = 40
TAG = re.compile(r"^[\w][\w '&.-]*$")


class AccountError(ValueError):
    """A sign-up or profile value is not acceptable; the message names the field."""


class Base(DeclarativeBase):
    pass


class AccountRow(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(BigInteger, unique=True, index=True)
    username: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    age_bucket: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gender: Mapped[str | None] = mapped_column(String(1), nullable=True)
    occupation: Mapped[str | None] = mapped_column(String(40), nullable=True)
    interest_genres: Mapped[str] = mapped_column(Text, default="[]")
    created: Mapped[int] = mapped_column(BigInteger)


class TagRow(Base):
    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("user_id", "movie_id", "tag"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(BigInteger, index=True)
    movie_id: Mapped[int] = mapped_column(BigInteger, index=True)
    tag: Mapped[str] = mapped_column(String(MAX_TAG))
    created: Mapped[int] = mapped_column(BigInteger)


@dataclass(frozen=True)
class Account:
    user_id: int
    username: str
    age_bucket: int | None = None
    gender: str | None = None
    occupation: str | None = None
    interest_genres: list[str] = field(default_factory=list)


def _account(row: AccountRow) -> Account:
    return Account(user_id=row.user_id, username=row.username, age_bucket=row.age_bucket, gender=row.gender,
                   occupation=row.occupation, interest_genres=list(json.loads(row.interest_genres or "[]")))


def check_profile(age_bucket: int | None, gender: str | None, occupation: str | None) -> None:
    if age_bucket is not None and age_bucket not in AGE_BUCKETS:
        raise AccountError(f"age group must be one of {', '.join(AGE_BUCKETS.values())}")
    if gender not in (None, "F", "M"):
        raise AccountError("gender must be F, M or not given")
    if occupation is not None and occupation not in OCCUPATIONS:
        raise AccountError("occupation is not one of the listed ones")


class AccountStore:
    """Accounts and tags behind one SQLAlchemy engine (tables created on first use)."""

    def __init__(self, url: str, id_base: int, is_dataset_user: Callable[[int], bool] = lambda _uid: False) -> None:
        self.engine = create_engine(url, pool_pre_ping=True)
        Base.metadata.create_all(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.id_base = id_base
        self.is_dataset_user = is_dataset_user
        self.hasher = PasswordHasher()  # argon2id

    def close(self) -> None:
        self.engine.dispose()

    # --- accounts -----------------------------------------------------------------------------
    def create(self, username: str, password: str, age_bucket: int | None = None, gender: str | None = None,
               occupation: str | None = None) -> Account:
        if not USERNAME.match(username or ""):
            raise AccountError("username must be 3-32 letters, digits, '.', '_' or '-'")
        if not MIN_PASSWORD <= len(password or "") <= MAX_PASSWORD:
            raise AccountError(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        check_profile(age_bucket, gender, occupation)
        hashed = self.hasher.hash(password)
        for _ in range(20):  # a concurrent sign-up may take the same id: the unique index refuses, retry
            with self.sessions() as db:
                if db.scalar(select(AccountRow.id).where(AccountRow.username == username)) is not None:
                    raise AccountError(f"username {username!r} is taken")
                user_id = max(self.id_base, (db.scalar(select(func.max(AccountRow.user_id))) or 0) + 1)
                while self.is_dataset_user(user_id):  # never write as a dataset user
                    user_id += 1
                row = AccountRow(user_id=user_id, username=username, password_hash=hashed, age_bucket=age_bucket,
                                 gender=gender, occupation=occupation, interest_genres="[]", created=int(time.time()))
                db.add(row)
                try:
                    db.commit()
                except IntegrityError:
                    db.rollback()
                    continue
                return _account(row)
        raise AccountError("could not allocate a user id; try again")

    def verify(self, username: str, password: str) -> Account | None:
        """The account when the password matches, else None (same work either way: no user enumeration by timing)."""
        with self.sessions() as db:
            row = db.scalar(select(AccountRow).where(AccountRow.username == username))
            try:
                if row is None:
                    self.hasher.verify(_DUMMY_HASH, password or "")
                    return None
                self.hasher.verify(row.password_hash, password or "")
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return None
            if self.hasher.check_needs_rehash(row.password_hash):
                row.password_hash = self.hasher.hash(password)
                db.commit()
            return _account(row)

    def get(self, user_id: int) -> Account | None:
        with self.sessions() as db:
            row = db.scalar(select(AccountRow).where(AccountRow.user_id == user_id))
            return _account(row) if row else None

    def set_interests(self, user_id: int, genres: list[str]) -> None:
        unknown = [g for g in genres if g not in GENRES]
        if unknown:
            raise AccountError(f"unknown genre(s): {', '.join(unknown)}")
        with self.sessions() as db:
            row = db.scalar(select(AccountRow).where(AccountRow.user_id == user_id))
            if row is None:
                raise AccountError("interests are kept for accounts only")
            row.interest_genres = json.dumps([g for g in GENRES if g in genres])
            db.commit()

    # --- tags ---------------------------------------------------------------------------------
    def add_tag(self, user_id: int, movie_id: int, tag: str) -> str:
        tag = " ".join((tag or "").split()).lower()
        if not 1 <= len(tag) <= MAX_TAG or not TAG.match(tag):
            raise AccountError(f"a tag is 1-{MAX_TAG} letters, digits, spaces or - ' & .")
        with self.sessions() as db:
            db.add(TagRow(user_id=user_id, movie_id=movie_id, tag=tag, created=int(time.time())))
            try:
                db.commit()
            except IntegrityError:  # already tagged so by this user: nothing to do
                db.rollback()
        return tag

    def movie_tags(self, movie_id: int, limit: int = 30) -> list[tuple[str, int]]:
        with self.sessions() as db:
            rows = db.execute(select(TagRow.tag, func.count()).where(TagRow.movie_id == movie_id)
                              .group_by(TagRow.tag).order_by(func.count().desc(), TagRow.tag).limit(limit))
            return [(t, int(n)) for t, n in rows]

    def user_tags(self, user_id: int, limit: int = 50) -> list[tuple[int, str]]:
        with self.sessions() as db:
            rows = db.execute(select(TagRow.movie_id, TagRow.tag).where(TagRow.user_id == user_id)
                              .order_by(TagRow.created.desc(), TagRow.id.desc()).limit(limit))
            return [(int(m), t) for m, t in rows]


_DUMMY_HASH = PasswordHasher().hash("not a real password")
