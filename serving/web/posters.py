"""Movie posters drawn locally as SVG from the title, year and genres: no external images.

The colours come from a hash of the movie id (stable across runs) tinted by the first
genre; text is dark on a light band so it keeps WCAG AA contrast whatever the colour.

Example::

    svg = poster_svg(1, "Toy Story", 1995, ["Animation", "Children", "Comedy"])
"""

from __future__ import annotations

import hashlib
import re
import textwrap
from typing import Sequence
from xml.sax.saxutils import escape

QUOTE = {'"': "&quot;"}
GENRE_HUE = {"Action": 5, "Adventure": 30, "Animation": 50, "Children": 80, "Comedy": 55, "Crime": 250,
             "Documentary": 180, "Drama": 280, "Fantasy": 300, "Film-Noir": 220, "Horror": 350, "Musical": 320,
             "Mystery": 240, "Romance": 335, "Sci-Fi": 195, "Thriller": 265, "War": 100, "Western": 25, "IMAX": 210}


def poster_svg(movie_id: int, title: str, year: int | None, genres: Sequence[str]) -> str:
    digest = hashlib.sha1(str(movie_id).encode()).digest()
    hue = (GENRE_HUE.get(genres[0], digest[0]) if genres else digest[0]) + digest[1] % 30
    hue2 = (hue + 40 + digest[2] % 60) % 360
    lines = textwrap.wrap(re.sub(r"\s*\(\d{4}\)\s*$", "", title), 17)[:3] or ["?"]  # the year has its own line
    text = "".join(f'<tspan x="100" dy="{0 if i == 0 else 24}">{escape(line)}</tspan>' for i, line in enumerate(lines))
    genre_line = escape(" · ".join(genres[:3]))
    shapes = "".join(f'<circle cx="{20 + digest[3 + i] % 160}" cy="{20 + digest[8 + i] % 120}" r="{10 + digest[13 + i] % 40}" '
                     f'fill="hsl({(hue + 60 * i) % 360},70%,80%)" opacity="0.35"/>' for i in range(4))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 200 300" width="200" height="300" role="img" '
            f'aria-label="{escape(title, QUOTE)} poster">'
            f'<defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1"><stop offset="0" stop-color="hsl({hue},55%,38%)"/>'
            f'<stop offset="1" stop-color="hsl({hue2},60%,22%)"/></linearGradient></defs>'
            f'<rect width="200" height="300" fill="url(#g)"/>{shapes}'
            f'<rect x="10" y="150" width="180" height="140" rx="8" fill="#fdfcf7" opacity="0.94"/>'
            f'<text x="100" y="178" font-family="sans-serif" font-size="18" font-weight="700" fill="#1a1a1a" '
            f'text-anchor="middle">{text}</text>'
            f'<text x="100" y="262" font-family="sans-serif" font-size="15" fill="#333" text-anchor="middle">'
            f'{year or ""}</text>'
            f'<text x="100" y="281" font-family="sans-serif" font-size="11" fill="#333" text-anchor="middle">'
            f'{genre_line}</text></svg>')
