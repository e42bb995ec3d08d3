"""What a web account tells about its user before any rating: demographics and interests.

Dataset users have published features (age bucket, gender, occupation, top genres) in
Redis; a new account has none until the batch plane next runs. ``with_profile`` fills
the gaps of a user's context from the account's profile, so the cold-start channels
(``demographic_popular``, ``genre_popular``) and the model's cold-user inputs see the
sign-up answers. Published features always win: a profile only fills what is missing.

Example::

    ctx, feats = with_profile(ctx, feats, Profile(age_bucket=25, gender="F", interest_genres=["Sci-Fi"]))
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.recall import RecallContext


@dataclass(frozen=True)
class Profile:
    age_bucket: int | None = None
    gender: str | None = None
    occupation: str | None = None
    interest_genres: list[str] = field(default_factory=list)


def with_profile(ctx: RecallContext, feats: dict[str, Any], profile: Profile | None) -> tuple[RecallContext, dict[str, Any]]:
    """``ctx`` and ``feats`` with the profile's values where the published features have none."""
    if profile is None:
        return ctx, feats
    feats = dict(feats)
    for name in ("age_bucket", "gender", "occupation"):
        if feats.get(name) in (None, "") and getattr(profile, name) not in (None, ""):
            feats[name] = getattr(profile, name)
    genres = list(ctx.top_genres) or list(profile.interest_genres)
    if not feats.get("top_genres") and genres:
        feats["top_genres"] = genres
    return replace(ctx, age_bucket=feats.get("age_bucket"), gender=feats.get("gender"), top_genres=genres), feats
