"""Demo data for the events example: a day of web events per folder (NDJSON), a users dimension (CSV) and a
products dimension (Parquet), landed the way a collector and two exports would land them.

Events per user are heavy-tailed (a Zipf law over the users, so a few users own a large share; ``zipf=0`` spreads
them evenly: data with no skew at all); with ``skew`` one user owns that share of the events besides (and as many
more sessions: a session is ten of a user's events in a day). About one event in twenty arrives a day late, in the
next day's folder. Landing is idempotent: a file already there is left alone (landed files are never modified).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import random

import polars as pl

from examples.landing import Landed, Lander
from lakehouse.errors import ConfigError
from lakehouse.storage import Storage

COUNTRIES = ("US", "DE", "FR", "GB", "IN", "BR", "JP", "ES", "IT", "NL", "SE", "PL")
CATEGORIES = ("books", "electronics", "garden", "toys", "grocery", "fashion", "sports", "beauty")
EVENT_TYPES = (("view", 0.80), ("add_to_cart", 0.12), ("purchase", 0.08))
LATE_SHARE = 0.05
SESSION_EVENTS = 10  # a user's day is cut into sessions of this many events: heavy users have many sessions
ZIPF = 1.1


def generate(
    storage: Storage,
    *,
    days: int = 14,
    users: int = 2_000,
    events_per_day: int = 5_000,
    products: int = 200,
    start: str = "2026-03-01",
    skew: float | None = None,
    zipf: float = ZIPF,
    seed: int = 0,
) -> Landed:
    """Land ``days`` days of events from ``start`` under ``raw/events/<day>/``, and the dimensions."""
    if skew is not None and not 0 < skew < 1:
        raise ConfigError(f"skew is the share of events one user owns, between 0 and 1 (not {skew})")
    rng = random.Random(seed)
    first = dt.date.fromisoformat(start)
    weights = [1 / (i + 1) ** zipf for i in range(users)]
    ids = list(range(1, users + 1))
    rng.shuffle(ids)  # the heaviest users are not the first ids
    catalog = [{"product_id": p, "name": f"product {p}", "category": rng.choice(CATEGORIES),
                "price": round(rng.uniform(1, 300), 2)} for p in range(1, products + 1)]
    popularity = [1 / (i + 1) for i in range(products)]
    lander = Lander(storage)
    land = lander.land
    late: list[str] = []
    for d in range(days):
        day = first + dt.timedelta(days=d)
        lines = late
        late = []
        picked = rng.choices(ids, weights=weights, k=events_per_day)
        if skew:
            picked = [ids[0] if rng.random() < skew else u for u in picked]
        seen: dict[int, int] = {}
        for n, user in enumerate(picked):
            seen[user] = seen.get(user, 0) + 1
            session = f"{user}-{day:%Y%m%d}-{(seen[user] - 1) // SESSION_EVENTS}"
            line = json.dumps(_event(rng, day, n, user, session, catalog, popularity))
            (late if rng.random() < LATE_SHARE and d + 1 < days else lines).append(line)
        land(f"raw/events/{day.isoformat()}/part-0.ndjson", ("\n".join(lines) + "\n").encode())
    signup = first - dt.timedelta(days=365)
    people = pl.DataFrame({
        "user_id": list(range(1, users + 1)),
        "name": [f"user {u}" for u in range(1, users + 1)],
        "country": [rng.choice(COUNTRIES) for _ in range(users)],
        "signup_date": [(signup + dt.timedelta(days=rng.randint(0, 364))).isoformat() for _ in range(users)],
    })
    land("raw/users/users.csv", people.write_csv().encode())
    buf = io.BytesIO()
    pl.DataFrame(catalog).write_parquet(buf)
    land("raw/products/products.parquet", buf.getvalue())
    return lander.landed


def _event(rng: random.Random, day: dt.date, n: int, user: int, session: str, catalog: list[dict[str, object]],
           popularity: list[float]) -> dict[str, object]:
    kind = rng.choices([k for k, _ in EVENT_TYPES], weights=[w for _, w in EVENT_TYPES])[0]
    product = rng.choices(catalog, weights=popularity)[0]
    at = dt.datetime.combine(day, dt.time(), dt.UTC) + dt.timedelta(microseconds=rng.randrange(86_400_000_000))
    price = product["price"]
    assert isinstance(price, float)
    return {
        "event_id": f"{day:%Y%m%d}-{n:08d}",
        "ts": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "user_id": user,
        "session_id": session,
        "event_type": kind,
        "product_id": product["product_id"],
        "amount": round(price * rng.randint(1, 3), 2) if kind == "purchase" else None,
    }
