"""Synthetic APIs for the tool-calling domain's training split: thousands of plausible tools made from vocabularies.

Why. Trained on ~60 standard-library tools, mimo-nano learnt their *names*: asked a held-out calendar
question it called ``math_comb``. A model that is to call tools it has never seen must instead *copy*:
pick the offered tool whose description matches the request, copy its name from the system prompt,
its argument names from the schema and the values from the request. Copying is only learnt when
memorising cannot pay, so the training split needs far more distinct tools than a small model can
remember; this module makes them by composition, deterministic in the caller's random stream.

A tool is ``verb_noun`` of one API *domain* (weather, tickets, payments, ...; the domains are the
families, so the family split still means "APIs never trained on"), sometimes with a qualifier
(``get_order_history``), a service prefix (``crm_create_contact``) or in camelCase (``getForecast``).
Its parameters are 1-4 fields drawn from the domain's and a shared pool, each under one of several
aliases (``city``/``city_name``/``location``), typed ``string``, ``integer``, ``number``, ``boolean``,
``enum`` or arrays of strings/integers; optional ones sometimes carry a default. The description is one
short sentence (tokens matter: with the nano tokenizer the tool list is most of a conversation). A
parameter's :class:`Field` knows how to sample a value and how a person would say it ("in Paris", "with
high priority", "tagged billing and urgent"), so requests can state values in natural phrasing the
model must map back onto parameter names. There is no real function behind a synthetic tool; its result
(:func:`result_of`) is a short JSON object synthesised from the arguments and the domain.

None of the vocabulary names a held-out standard-library module (``calendar``, ``shlex``, ``colorsys``,
``ipaddress``): the held-out split must stay unseen (a test checks it).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mimo.posttrain.domains.common import WORDS as _WORDS

__all__ = ["DOMAINS", "FAMILIES", "Field", "SyntheticTool", "make_tool", "request_text", "result_of"]

_CITIES = tuple(
    (
        "Paris Tokyo Lagos Lima Oslo Cairo Denver Seoul Mumbai Quito Perth Porto Nairobi Austin Hanoi Dublin Krakow "
        "Havana Zurich Manila Bogota Tunis"
    ).split()
)
_COUNTRIES = ("FR", "JP", "NG", "PE", "NO", "EG", "US", "KR", "IN", "EC", "AU", "PT", "KE", "IE", "PL", "CH")
_CURRENCIES = ("USD", "EUR", "JPY", "GBP", "INR", "BRL", "CHF", "CAD", "NGN", "KRW", "MXN", "SEK")
_FIRST = tuple(
    (
        "Ana Bo Chen Dara Eli Fatima Goran Hana Ivo Juno Kofi Lena Mira Noor Omar Priya Quinn Rosa Sami Tariq Uma Vera "
        "Wen Yusuf Zoe"
    ).split()
)
_LAST = ("Lopez", "Kim", "Okafor", "Silva", "Novak", "Haddad", "Tanaka", "Berg", "Mensah", "Rossi", "Patel", "Ng")
_ADJ = ("quick", "blue", "late", "broken", "quarterly", "new", "urgent", "shared", "weekly", "draft", "final", "spare")
_OBJ = (
    "report",
    "login page",
    "invoice",
    "backup",
    "sprint plan",
    "budget",
    "menu",
    "playlist",
    "roadmap",
    "receipt",
    "dashboard",
    "meeting notes",
    "checkout flow",
    "garden plan",
    "lesson",
    "contract",
)
_TAGS = tuple(
    ("billing urgent backend frontend mobile security design docs ops sales legal research travel family health music").split()
)


# ----------------------------------------------------------------------------------------------- fields


@dataclass(frozen=True)
class Field:
    """One parameter kind: its aliases (parameter names), JSON schema, a value sampler, natural phrasings.

    ``phrases`` are templates with ``{v}`` (the value as said) and ``{w}`` (the parameter name as words);
    for a boolean they are ``(when true, when false)`` pairs. ``default`` (optional) samples a default
    for the schema when the field is optional."""

    names: tuple[str, ...]
    schema: dict[str, Any]
    sample: Callable[[random.Random], Any]
    phrases: tuple[Any, ...] = ()
    default: Callable[[random.Random], Any] | None = None


def _pick(values: Sequence[Any]) -> Callable[[random.Random], Any]:
    return lambda rng: rng.choice(values)


def _ints(lo: int, hi: int) -> Callable[[random.Random], int]:
    return lambda rng: rng.randint(lo, hi)


def _money(rng: random.Random) -> float | int:
    return rng.randint(5, 5000) if rng.random() < 0.4 else round(rng.uniform(1, 2000), 2)


def _title(rng: random.Random) -> str:
    return f"{rng.choice(_ADJ).capitalize()} {rng.choice(_OBJ)}"


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _email(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST).lower()}.{rng.choice(_LAST).lower()}@example.com"


def _date(rng: random.Random) -> str:
    return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _time(rng: random.Random) -> str:
    return f"{rng.randint(6, 21):02d}:{rng.choice(('00', '15', '30', '45'))}"


def _code(prefix: str) -> Callable[[random.Random], str]:
    return lambda rng: f"{prefix}-{rng.randint(1000, 99999)}"


def _tags(rng: random.Random) -> list[str]:
    return rng.sample(_TAGS, rng.randint(1, 3))


def _id_list(rng: random.Random) -> list[int]:
    return [rng.randint(1, 9999) for _ in range(rng.randint(2, 4))]


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 5)))


def _enum(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


_S, _I, _N, _B = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_SA = {"type": "array", "items": {"type": "string"}}
_IA = {"type": "array", "items": {"type": "integer"}}

F = Field  # short name for the tables below
CITY = F(("city", "city_name", "location"), _S, _pick(_CITIES), ("in {v}", "for {v}"))
COUNTRY = F(("country", "country_code", "region"), _S, _pick(_COUNTRIES), ("in country {v}", "with {w} {v}"))
DATE = F(("date", "day", "on_date"), _S, _date, ("on {v}", "for {v}"))
START = F(("start_date", "from_date", "since"), _S, _date, ("from {v}", "starting {v}"))
END = F(("end_date", "to_date", "until"), _S, _date, ("until {v}", "ending {v}"))
TIME = F(("time", "start_time", "at_time"), _S, _time, ("at {v}",))
TITLE = F(("title", "name", "subject", "summary"), _S, _title, ('titled "{v}"', 'called "{v}"', '"{v}" as the {w}'))
NOTE = F(("note", "message", "comment", "body"), _S, _text, ('with the {w} "{v}"', 'saying "{v}"'))
QUERY = F(("query", "keyword", "q", "search_text"), _S, _text, ('matching "{v}"', 'for "{v}"'))
PERSON = F(("assignee", "owner", "contact_name", "user"), _S, _person, ("for {v}", "assigned to {v}", "with {w} {v}"))
EMAIL = F(("email", "recipient", "to_email"), _S, _email, ("to {v}", "for {v}"))
LIMIT = F(
    ("limit", "max_results", "count", "top_k"),
    _I,
    _ints(1, 50),
    ("limited to {v}", "at most {v} results", "top {v}"),
    default=_pick((5, 10, 20)),
)
PAGE = F(("page", "page_number"), _I, _ints(1, 30), ("on page {v}", "page {v}"), default=_pick((1,)))
QTY = F(("quantity", "qty", "amount_units"), _I, _ints(1, 40), ("{v} of them", "quantity {v}"), default=_pick((1,)))
DAYS = F(
    ("days", "num_days", "horizon_days"), _I, _ints(1, 14), ("for the next {v} days", "over {v} days"), default=_pick((1, 3, 7))
)
AMOUNT = F(("amount", "value", "total"), _N, _money, ("of {v}", "for an amount of {v}"))
PRICE = F(("max_price", "budget", "price_limit"), _N, _money, ("under {v}", "with a budget of {v}"))
RATING = F(
    ("min_rating", "rating", "stars"), _N, lambda rng: rng.choice((3, 3.5, 4, 4.5, 5)), ("rated at least {v}", "with {w} {v}")
)
FROM_CUR = F(("from_currency", "source_currency", "base"), _S, _pick(_CURRENCIES), ("from {v}",))
TO_CUR = F(("to_currency", "target_currency", "quote"), _S, _pick(_CURRENCIES), ("to {v}", "into {v}"))
TAGS = F(("tags", "labels", "categories"), _SA, _tags, ("tagged {v}", "with tags {v}", "labelled {v}"))
IDS = F(("ids", "item_ids", "record_ids"), _IA, _id_list, ("for ids {v}", "with {w} {v}"))
EMAILS = F(
    ("attendees", "recipients", "cc"),
    _SA,
    lambda rng: sorted({_email(rng) for _ in range(rng.randint(1, 3))}),
    ("with {v}", "inviting {v}", "copying {v}"),
)
PRIORITY = F(
    ("priority", "urgency", "severity"),
    _enum("low", "medium", "high", "urgent"),
    _pick(("low", "medium", "high", "urgent")),
    ("with {v} priority", "at {w} {v}"),
    default=_pick(("medium", "low")),
)
STATUS = F(
    ("status", "state"),
    _enum("open", "pending", "closed"),
    _pick(("open", "pending", "closed")),
    ("that are {v}", "with status {v}"),
)
ORDER = F(
    ("sort_order", "order", "direction"),
    _enum("asc", "desc"),
    _pick(("asc", "desc")),
    ("sorted {v}", "in {v} order"),
    default=_pick(("asc", "desc")),
)
FORMAT = F(
    ("format", "output_format", "file_type"),
    _enum("json", "csv", "pdf"),
    _pick(("json", "csv", "pdf")),
    ("as {v}", "in {v} format"),
    default=_pick(("json",)),
)
LANG = F(
    ("language", "lang", "locale"),
    _enum("en", "fr", "de", "es", "ja"),
    _pick(("en", "fr", "de", "es", "ja")),
    ("in language {v}",),
    default=_pick(("en",)),
)
NOTIFY = F(
    ("notify", "send_notification", "alert_user"),
    _B,
    lambda rng: rng.random() < 0.5,
    (("and notify people", "with a notification"), ("without notifying anyone", "with no notification")),
    default=_pick((False, True)),
)
ARCHIVED = F(
    ("include_archived", "show_archived", "with_archived"),
    _B,
    lambda rng: rng.random() < 0.5,
    (("including archived ones", "with archived items"), ("excluding archived ones", "without archived items")),
    default=_pick((False,)),
)
VERBOSE = F(
    ("verbose", "detailed", "full_details"),
    _B,
    lambda rng: rng.random() < 0.5,
    (("with full details", "in detail"), ("briefly", "without details")),
    default=_pick((False,)),
)

# Shared optional fields any API may take.
_COMMON = (LIMIT, PAGE, TAGS, NOTIFY, FORMAT, LANG, VERBOSE, ORDER)


# ---------------------------------------------------------------------------------------------- domains


@dataclass(frozen=True)
class Domain:
    """One API family: its service prefixes, nouns, verbs, fields, and the output fields its results carry."""

    prefixes: tuple[str, ...]
    nouns: tuple[str, ...]
    verbs: tuple[str, ...]
    fields: tuple[Field, ...]
    outputs: tuple[tuple[str, Callable[[random.Random], Any]], ...]


def _d(prefixes: str, nouns: str, verbs: str, fields: tuple[Field, ...], *outputs: tuple[str, Callable]) -> Domain:
    return Domain(tuple(prefixes.split()), tuple(nouns.split()), tuple(verbs.split()), fields, tuple(outputs))


_TEMP = ("temperature", lambda rng: round(rng.uniform(-10, 38), 1))
_COUNT = ("count", _ints(0, 120))
_ID = ("id", _code("ID"))
_OK = ("ok", lambda rng: True)
_PRICE = ("price", lambda rng: round(rng.uniform(3, 900), 2))
_ETA = ("eta_minutes", _ints(3, 180))
_SCORE = ("score", lambda rng: round(rng.uniform(0, 1), 2))

ROUTE_MODE = F(
    ("mode", "travel_mode"),
    _enum("driving", "walking", "cycling", "transit"),
    _pick(("driving", "walking", "cycling", "transit")),
    ("by {v}", "{v}"),
)
UNIT = F(
    ("unit", "units", "temperature_unit"),
    _enum("celsius", "fahrenheit"),
    _pick(("celsius", "fahrenheit")),
    ("in {v}",),
    default=_pick(("celsius",)),
)
DIST_UNIT = F(("distance_unit", "units"), _enum("km", "miles"), _pick(("km", "miles")), ("in {v}",), default=_pick(("km",)))
CABIN = F(
    ("cabin", "cabin_class", "seat_class"),
    _enum("economy", "premium", "business", "first"),
    _pick(("economy", "premium", "business", "first")),
    ("in {v} class", "flying {v}"),
)
GUESTS = F(("guests", "party_size", "people", "travelers"), _I, _ints(1, 9), ("for {v} people", "for a party of {v}"))
NIGHTS = F(("nights", "num_nights"), _I, _ints(1, 14), ("for {v} nights",))
ORIGIN = F(("origin", "from_city", "departure"), _S, _pick(_CITIES), ("from {v}", "leaving {v}"))
DEST = F(("destination", "to_city", "arrival"), _S, _pick(_CITIES), ("to {v}", "going to {v}"))
SKU = F(("sku", "product_id", "item_code"), _S, _code("SKU"), ("for item {v}", "with {w} {v}"))
ORDER_ID = F(("order_id", "order_number"), _S, _code("ORD"), ("for order {v}", "on order {v}"))
TICKET_ID = F(("ticket_id", "issue_key"), _S, _code("TCK"), ("for ticket {v}", "on {v}"))
ACCOUNT = F(("account_id", "account"), _S, _code("ACC"), ("on account {v}", "for account {v}"))
SYMBOL = F(
    ("symbol", "ticker"), _S, _pick(("AAPL", "TSLA", "NVDA", "SAP", "SONY", "INFY", "BABA", "SHOP")), ("for {v}", "of {v}")
)
SHARES = F(("shares", "units_count"), _I, _ints(1, 500), ("{v} shares", "for {v} units"))
GENRE = F(
    ("genre", "style"),
    _enum("jazz", "rock", "pop", "classical", "hiphop"),
    _pick(("jazz", "rock", "pop", "classical", "hiphop")),
    ("in the {v} genre", "{v}"),
)
ARTIST = F(("artist", "artist_name", "band"), _S, lambda rng: f"The {rng.choice(_WORDS).capitalize()}s", ("by {v}",))
DURATION = F(("duration_minutes", "minutes", "length_min"), _I, _ints(5, 180), ("for {v} minutes", "lasting {v} minutes"))
CALORIES = F(("max_calories", "calories"), _I, _ints(100, 1200), ("under {v} calories", "with {w} {v}"))
DIET = F(
    ("diet", "dietary_preference"),
    _enum("vegan", "vegetarian", "keto", "none"),
    _pick(("vegan", "vegetarian", "keto", "none")),
    ("{v}", "for a {v} diet"),
)
INGREDIENTS = F(
    ("ingredients", "include_ingredients"),
    _SA,
    lambda rng: rng.sample(("rice", "tofu", "lentils", "basil", "tomato", "egg", "garlic", "lime", "cheese"), rng.randint(1, 3)),
    ("with {v}", "using {v}"),
)
DEVICE = F(("device_id", "device"), _S, _code("DEV"), ("on device {v}", "for {v}"))
LEVEL = F(("level", "brightness", "percent"), _I, _ints(0, 100), ("to {v} percent", "at level {v}"))
ROOM = F(("room", "zone", "area"), _S, _pick(("kitchen", "bedroom", "office", "garage", "hallway", "patio")), ("in the {v}",))
TEMP_SET = F(
    ("target_temp", "setpoint", "degrees"), _N, lambda rng: rng.choice((18, 19.5, 20, 21, 22.5, 24)), ("to {v} degrees",)
)
REPO = F(
    ("repo", "repository", "project"), _S, lambda rng: f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}", ("in {v}", "for repo {v}")
)
BRANCH = F(
    ("branch", "ref"), _S, lambda rng: rng.choice(("main", "dev", "release/2.1", "fix/login", "feature/search")), ("on {v}",)
)
ENV = F(("environment", "env", "stage"), _enum("dev", "staging", "prod"), _pick(("dev", "staging", "prod")), ("to {v}", "in {v}"))
REPLICAS = F(("replicas", "instances", "node_count"), _I, _ints(1, 12), ("with {v} replicas", "to {v} instances"))
PATH = F(
    ("path", "file_path", "folder"),
    _S,
    lambda rng: "/" + "/".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3))),
    ("at {v}", "in {v}"),
)
SIZE_MB = F(("max_size_mb", "size_limit"), _I, _ints(1, 500), ("up to {v} MB",))
TEAM = F(
    ("team", "department"),
    _S,
    lambda rng: rng.choice(("sales", "support", "platform", "finance", "marketing", "research")),
    ("in the {v} team",),
)
SALARY = F(("salary", "annual_salary"), _N, lambda rng: rng.randint(30, 180) * 1000, ("paying {v}",))
LEVEL_ENUM = F(
    ("seniority", "grade"),
    _enum("junior", "mid", "senior", "lead"),
    _pick(("junior", "mid", "senior", "lead")),
    ("at {v} level", "{v}"),
)
SPORT = F(
    ("sport", "league"),
    _enum("football", "tennis", "basketball", "cricket"),
    _pick(("football", "tennis", "basketball", "cricket")),
    ("for {v}", "in {v}"),
)
TEAM_NAME = F(
    ("team_name", "club"),
    _S,
    lambda rng: f"{rng.choice(_CITIES)} {rng.choice(('United', 'Rovers', 'Stars', 'Lions'))}",
    ("for {v}", "of {v}"),
)
SEASON = F(("season", "year"), _I, _ints(2015, 2025), ("in the {v} season", "for {v}"))
TEXT = F(("text", "content", "input_text"), _S, _text, ('for "{v}"', 'with the text "{v}"'))
SOURCE_LANG = F(
    ("source_lang", "from_lang"), _enum("en", "fr", "de", "es", "ja"), _pick(("en", "fr", "de", "es", "ja")), ("from {v}",)
)
TARGET_LANG = F(
    ("target_lang", "to_lang"), _enum("en", "fr", "de", "es", "ja"), _pick(("en", "fr", "de", "es", "ja")), ("into {v}",)
)
WEIGHT = F(("weight_kg", "weight"), _N, lambda rng: round(rng.uniform(0.1, 30), 1), ("weighing {v} kg",))
CARRIER = F(
    ("carrier", "courier"), _enum("dhl", "ups", "fedex", "post"), _pick(("dhl", "ups", "fedex", "post")), ("with {v}", "via {v}")
)
TRACKING = F(("tracking_number", "tracking_id"), _S, _code("TRK"), ("for parcel {v}", "with tracking {v}"))
STEPS = F(("steps", "step_count"), _I, _ints(500, 20000), ("with {v} steps",))
HEART = F(("heart_rate", "bpm"), _I, _ints(50, 180), ("at {v} bpm",))
ISBN = F(("isbn", "book_id"), _S, lambda rng: f"978-{rng.randint(1000000000, 9999999999)}", ("for book {v}", "with {w} {v}"))
COURSE = F(("course_id", "course_code"), _S, _code("CS"), ("for course {v}", "in {v}"))
GRADE = F(("grade", "score"), _N, lambda rng: rng.choice((55, 62.5, 70, 78.5, 88, 91, 100)), ("with a grade of {v}",))
ROLE = F(
    ("role", "permission"), _enum("viewer", "editor", "admin"), _pick(("viewer", "editor", "admin")), ("as {v}", "with {w} {v}")
)
USERNAME = F(
    ("username", "user_id", "handle"),
    _S,
    lambda rng: f"{rng.choice(_FIRST).lower()}{rng.randint(1, 99)}",
    ("for user {v}", "for {v}"),
)
VISIBILITY = F(
    ("visibility", "privacy"),
    _enum("public", "private", "friends"),
    _pick(("public", "private", "friends")),
    ("as {v}", "with {v} visibility"),
    default=_pick(("public",)),
)
KWH = F(("kwh", "energy_kwh"), _N, lambda rng: round(rng.uniform(0.5, 80), 1), ("of {v} kWh",))
PLATE = F(
    ("plate", "license_plate"),
    _S,
    lambda rng: f"{rng.choice('ABCDEFGHKLMN')}{rng.choice('PRSTVWXYZ')}-{rng.randint(100, 999)}",
    ("for car {v}", "with plate {v}"),
)
SEVERITY_LOG = F(
    ("log_level", "min_level"),
    _enum("debug", "info", "warning", "error"),
    _pick(("debug", "info", "warning", "error")),
    ("at {v} level",),
)

DOMAINS: dict[str, Domain] = {
    "weather": _d(
        "wx meteo skycast",
        "weather forecast air_quality uv_index storm_alert pollen_count",
        "get fetch check lookup",
        (CITY, COUNTRY, UNIT, DAYS, DATE),
        _TEMP,
        ("conditions", _pick(("sunny", "cloudy", "rain", "snow"))),
    ),
    "finance": _d(
        "fx bank money",
        "exchange_rate currency balance transaction statement",
        "get convert list fetch export",
        (AMOUNT, FROM_CUR, TO_CUR, ACCOUNT, START, END, DATE),
        ("converted", lambda rng: round(rng.uniform(1, 9000), 2)),
        ("rate", lambda rng: round(rng.uniform(0.01, 150), 4)),
    ),
    "stocks": _d(
        "market trade quotes",
        "stock_price quote portfolio order dividend watchlist",
        "get buy sell list add",
        (SYMBOL, SHARES, PRICE, ACCOUNT, DATE),
        _PRICE,
        ("change_pct", lambda rng: round(rng.uniform(-9, 9), 2)),
    ),
    "tickets": _d(
        "helpdesk jira support",
        "ticket issue bug incident",
        "create update close assign list search",
        (TITLE, PRIORITY, TICKET_ID, PERSON, STATUS, NOTE),
        _ID,
        ("state", _pick(("open", "pending", "closed"))),
    ),
    "crm": _d(
        "crm sales",
        "contact lead deal account opportunity",
        "create update get list delete merge",
        (PERSON, EMAIL, COUNTRY, AMOUNT, STATUS, NOTE),
        _ID,
        ("stage", _pick(("new", "qualified", "won", "lost"))),
    ),
    "shop": _d(
        "shop store cart",
        "product cart_item wishlist review coupon",
        "search add remove get list apply",
        (QUERY, SKU, QTY, PRICE, RATING),
        _PRICE,
        ("in_stock", lambda rng: rng.random() < 0.7),
    ),
    "orders": _d(
        "orders oms",
        "order refund return invoice",
        "get cancel track create refund list",
        (ORDER_ID, AMOUNT, EMAIL, DATE, NOTE),
        ("status", _pick(("shipped", "processing", "delivered", "refunded"))),
        _ETA,
    ),
    "shipping": _d(
        "ship parcel logistics",
        "shipment parcel label pickup delivery_quote",
        "create track schedule cancel get estimate",
        (TRACKING, WEIGHT, CARRIER, ORIGIN, DEST, DATE),
        _ETA,
        ("cost", lambda rng: round(rng.uniform(4, 90), 2)),
    ),
    "flights": _d(
        "air fly",
        "flight fare seat boarding_pass",
        "search book cancel get list change",
        (ORIGIN, DEST, DATE, CABIN, GUESTS, PRICE),
        _PRICE,
        ("flight_no", _code("FL")),
    ),
    "hotels": _d(
        "stay rooms lodging",
        "hotel room booking availability",
        "search book cancel get list",
        (CITY, DATE, NIGHTS, GUESTS, PRICE, RATING),
        _PRICE,
        ("hotel", lambda rng: f"Hotel {rng.choice(_WORDS).capitalize()}"),
    ),
    "restaurants": _d(
        "dine eats table",
        "restaurant table reservation menu",
        "search book cancel get list",
        (CITY, DATE, TIME, GUESTS, DIET, RATING),
        ("confirmation", _code("RSV")),
        _COUNT,
    ),
    "maps": _d(
        "maps geo nav",
        "route directions distance place traffic",
        "get find compute search estimate",
        (ORIGIN, DEST, ROUTE_MODE, DIST_UNIT, CITY, QUERY),
        ("distance", lambda rng: round(rng.uniform(0.5, 900), 1)),
        _ETA,
    ),
    "rides": _d(
        "ride taxi cab",
        "ride driver fare pickup",
        "request cancel estimate get track",
        (ORIGIN, DEST, GUESTS, TIME, PLATE),
        _ETA,
        ("fare", lambda rng: round(rng.uniform(5, 80), 2)),
    ),
    "email": _d(
        "mail inbox smtp",
        "email draft thread attachment mailbox",
        "send draft search delete archive list",
        (EMAIL, TITLE, NOTE, EMAILS, QUERY, DATE),
        _ID,
        ("sent", lambda rng: True),
    ),
    "chat": _d(
        "chat im msg",
        "message channel thread reaction",
        "send post list delete pin create",
        (NOTE, USERNAME, TITLE, QUERY, VISIBILITY),
        _ID,
        ("delivered", lambda rng: True),
    ),
    "events": _d(
        "events meet agenda",
        "event meeting reminder invite",
        "create schedule cancel update list move",
        (TITLE, DATE, TIME, DURATION, EMAILS, CITY),
        _ID,
        ("starts", _date),
    ),
    "tasks": _d(
        "todo tasks kanban",
        "task todo checklist project board",
        "create complete update list delete assign",
        (TITLE, DATE, PRIORITY, PERSON, STATUS, NOTE),
        _ID,
        ("done", lambda rng: rng.random() < 0.5),
    ),
    "notes": _d(
        "notes memo wiki",
        "note page snippet bookmark",
        "create search update delete get share",
        (TITLE, NOTE, QUERY, VISIBILITY, USERNAME),
        _ID,
        ("words", _ints(3, 900)),
    ),
    "files": _d(
        "drive files storage",
        "file folder share_link upload backup",
        "list upload delete move share get",
        (PATH, SIZE_MB, QUERY, USERNAME, ROLE),
        ("size_kb", _ints(1, 90000)),
        _COUNT,
    ),
    "music": _d(
        "music tunes audio",
        "song playlist album artist_radio lyrics",
        "play search create add get recommend",
        (ARTIST, GENRE, TITLE, QUERY, DURATION),
        ("track", lambda rng: f"{rng.choice(_WORDS).capitalize()} Song"),
        _COUNT,
    ),
    "video": _d(
        "video stream tv",
        "movie episode show subtitle",
        "search play get recommend list rent",
        (TITLE, GENRE, LANG, SEASON, RATING),
        ("title", _title),
        _SCORE,
    ),
    "recipes": _d(
        "recipe cook kitchen",
        "recipe meal_plan shopping_list nutrition",
        "search get create suggest compute",
        (INGREDIENTS, DIET, CALORIES, GUESTS, QUERY),
        ("recipe", lambda rng: f"{rng.choice(_WORDS).capitalize()} stew"),
        ("kcal", _ints(150, 1200)),
    ),
    "fitness": _d(
        "fit health gym",
        "workout step_log heart_rate sleep_log goal",
        "log get list set summarize",
        (STEPS, HEART, DURATION, DATE, USERNAME),
        ("streak_days", _ints(0, 60)),
        ("kcal", _ints(50, 900)),
    ),
    "smarthome": _d(
        "home iot hub",
        "light thermostat lock camera scene",
        "set get turn_on turn_off schedule list",
        (DEVICE, LEVEL, ROOM, TEMP_SET, TIME),
        ("power", _pick(("on", "off"))),
        ("battery", _ints(5, 100)),
    ),
    "devops": _d(
        "ci deploy ops",
        "deployment build pipeline service log",
        "trigger get restart scale rollback list",
        (REPO, BRANCH, ENV, REPLICAS, SEVERITY_LOG, DATE),
        ("run_id", _code("RUN")),
        ("state", _pick(("queued", "running", "passed"))),
    ),
    "code_host": _d(
        "git vcs",
        "pull_request commit branch release review",
        "create merge list get close tag",
        (REPO, BRANCH, TITLE, USERNAME, NOTE),
        ("number", _ints(1, 4000)),
        ("url", lambda rng: f"https://git.example.com/{rng.randint(1, 999)}"),
    ),
    "hr": _d(
        "hr people staff",
        "employee candidate leave_request job_posting payslip",
        "create get list approve update search",
        (PERSON, TEAM, SALARY, LEVEL_ENUM, START, END),
        _ID,
        ("approved", lambda rng: rng.random() < 0.6),
    ),
    "sports": _d(
        "sports scores",
        "match score standings player_stats fixture",
        "get list search follow",
        (SPORT, TEAM_NAME, SEASON, DATE),
        ("score", lambda rng: f"{rng.randint(0, 5)}-{rng.randint(0, 5)}"),
        _COUNT,
    ),
    "translate": _d(
        "lingo translate",
        "translation glossary transcript",
        "translate detect get create",
        (TEXT, SOURCE_LANG, TARGET_LANG, FORMAT),
        ("translated", _text),
        ("confidence", lambda rng: round(rng.uniform(0.5, 1), 2)),
    ),
    "shipping_rates": _d(
        "rates tariff",
        "customs_duty tax_rate import_fee",
        "compute estimate get lookup",
        (AMOUNT, COUNTRY, WEIGHT, FROM_CUR),
        ("duty", lambda rng: round(rng.uniform(0, 400), 2)),
        ("currency", _pick(_CURRENCIES)),
    ),
    "library": _d(
        "books lib",
        "book loan hold author",
        "search borrow return reserve renew get",
        (ISBN, QUERY, USERNAME, DATE),
        ("due", _date),
        ("copies", _ints(0, 12)),
    ),
    "school": _d(
        "edu campus lms",
        "course assignment grade enrollment",
        "enroll submit get list drop post",
        (COURSE, USERNAME, GRADE, DATE, TITLE),
        ("credits", _ints(1, 6)),
        _ID,
    ),
    "social": _d(
        "social feed",
        "post follower comment like profile",
        "create delete list get share report",
        (NOTE, USERNAME, VISIBILITY, TAGS),
        _ID,
        ("likes", _ints(0, 5000)),
    ),
    "energy": _d(
        "grid power solar",
        "meter_reading tariff usage_report charger_session",
        "get submit list start stop estimate",
        (KWH, ACCOUNT, DATE, DEVICE),
        ("cost", lambda rng: round(rng.uniform(1, 300), 2)),
        ("kwh_total", lambda rng: round(rng.uniform(1, 900), 1)),
    ),
    "security": _d(
        "sec auth iam",
        "api_key session access_grant audit_log password_reset",
        "create revoke list get rotate grant",
        (USERNAME, ROLE, DATE, SEVERITY_LOG, EMAIL),
        ("key_id", _code("KEY")),
        ("expires", _date),
    ),
    "cars": _d(
        "fleet auto garage",
        "vehicle service_booking parking_spot fuel_log",
        "book get list register cancel find",
        (PLATE, DATE, TIME, CITY, AMOUNT),
        ("slot", _code("SLT")),
        _PRICE,
    ),
}

# Families: one per API domain, prefixed so that no family can be mistaken for a standard-library module.
FAMILIES: dict[str, tuple[str, ...]] = {f"api.{name}": d.nouns for name, d in DOMAINS.items()}

_QUALIFIERS = ("history", "summary", "status", "details", "stats")
_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "get": ("Get the {noun}{by}.", "Return the current {noun}{by}."),
    "fetch": ("Fetch the {noun}{by}.",),
    "check": ("Check the {noun}{by}.",),
    "lookup": ("Look up the {noun}{by}.",),
    "find": ("Find a {noun}{by}.",),
    "list": ("List {nouns}{by}.", "Return all {nouns}{by}."),
    "search": ("Search {nouns}{by}.", "Find {nouns}{by}."),
    "create": ("Create a new {noun}{by}.", "Add a {noun}{by}."),
    "add": ("Add a {noun}{by}.",),
    "update": ("Update an existing {noun}{by}.", "Change a {noun}{by}."),
    "delete": ("Delete a {noun}{by}.",),
    "remove": ("Remove a {noun}{by}.",),
    "cancel": ("Cancel a {noun}{by}.",),
    "close": ("Close a {noun}{by}.",),
    "assign": ("Assign a {noun}{by}.",),
    "convert": ("Convert a {noun}{by}.",),
    "export": ("Export {nouns}{by}.",),
    "buy": ("Buy a {noun}{by}.",),
    "sell": ("Sell a {noun}{by}.",),
    "apply": ("Apply a {noun}{by}.",),
    "track": ("Track a {noun}{by}.",),
    "refund": ("Refund a {noun}{by}.",),
    "schedule": ("Schedule a {noun}{by}.",),
    "estimate": ("Estimate the {noun}{by}.",),
    "book": ("Book a {noun}{by}.",),
    "change": ("Change a {noun}{by}.",),
    "compute": ("Compute the {noun}{by}.",),
    "request": ("Request a {noun}{by}.",),
    "send": ("Send a {noun}{by}.",),
    "draft": ("Draft a {noun}{by}.",),
    "archive": ("Archive a {noun}{by}.",),
    "post": ("Post a {noun}{by}.",),
    "pin": ("Pin a {noun}{by}.",),
    "move": ("Move a {noun}{by}.",),
    "complete": ("Mark a {noun} as done{by}.",),
    "share": ("Share a {noun}{by}.",),
    "upload": ("Upload a {noun}{by}.",),
    "play": ("Play a {noun}{by}.",),
    "recommend": ("Recommend {nouns}{by}.",),
    "rent": ("Rent a {noun}{by}.",),
    "suggest": ("Suggest a {noun}{by}.",),
    "log": ("Log a {noun}{by}.",),
    "set": ("Set the {noun}{by}.",),
    "summarize": ("Summarize the {noun}{by}.",),
    "turn_on": ("Turn on a {noun}{by}.",),
    "turn_off": ("Turn off a {noun}{by}.",),
    "trigger": ("Start a {noun}{by}.",),
    "restart": ("Restart a {noun}{by}.",),
    "scale": ("Scale a {noun}{by}.",),
    "rollback": ("Roll back a {noun}{by}.",),
    "merge": ("Merge a {noun}{by}.",),
    "tag": ("Tag a {noun}{by}.",),
    "approve": ("Approve a {noun}{by}.",),
    "follow": ("Follow a {noun}{by}.",),
    "translate": ("Translate a {noun}{by}.",),
    "detect": ("Detect the {noun}{by}.",),
    "borrow": ("Borrow a {noun}{by}.",),
    "return": ("Return a {noun}{by}.",),
    "reserve": ("Reserve a {noun}{by}.",),
    "renew": ("Renew a {noun}{by}.",),
    "enroll": ("Enroll in a {noun}{by}.",),
    "submit": ("Submit a {noun}{by}.",),
    "drop": ("Drop a {noun}{by}.",),
    "report": ("Report a {noun}{by}.",),
    "start": ("Start a {noun}{by}.",),
    "stop": ("Stop a {noun}{by}.",),
    "revoke": ("Revoke a {noun}{by}.",),
    "rotate": ("Rotate a {noun}{by}.",),
    "grant": ("Grant a {noun}{by}.",),
    "register": ("Register a {noun}{by}.",),
}
# How a user says the verb (several, so the request's wording is not the tool name's).
_SAY_VERB: dict[str, tuple[str, ...]] = {
    "get": ("get", "show me", "look up"),
    "fetch": ("fetch", "get"),
    "check": ("check", "look at"),
    "lookup": ("look up", "find"),
    "find": ("find", "locate"),
    "list": ("list", "show all"),
    "search": ("search for", "find"),
    "create": ("create", "make", "open"),
    "add": ("add", "put in"),
    "update": ("update", "edit"),
    "delete": ("delete", "remove"),
    "remove": ("remove", "take out"),
    "turn_on": ("turn on", "switch on"),
    "turn_off": ("turn off", "switch off"),
    "trigger": ("trigger", "kick off"),
    "complete": ("complete", "finish"),
    "compute": ("compute", "work out"),
}


def _words(name: str) -> str:
    return name.replace("_", " ")


def _plural(noun: str) -> str:
    w = _words(noun)
    if w.endswith(("details", "stats", "news")):
        return w
    if w.endswith(("s", "x", "sh", "ch")):
        return w + "es"
    if w.endswith("y") and w[-2:-1] not in "aeiou":
        return w[:-1] + "ies"
    return w + "s"


_AN = re.compile(r"\b([Aa]) (?=[aeiou])")  # "a invite" -> "an invite"


def _articles(text: str) -> str:
    return _AN.sub(lambda m: m.group(1) + "n ", text)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


@dataclass(frozen=True)
class SyntheticTool:
    """A made-up tool: its OpenAI schema, what it is about (for requests and results), its fields by parameter."""

    schema: dict[str, Any]
    domain: str
    verb: str
    noun: str
    fields: dict[str, Field]  # parameter name -> field, in schema order

    @property
    def name(self) -> str:
        return self.schema["function"]["name"]


OPAQUE_NAMES = 0.35
"""The fraction of synthetic tools whose name is, or starts with, a made-up word (``vomira_get_forecast``,
``tekalu3``). A name built from the family's verbs and nouns can be guessed from the request without reading
the tool list, and a small model learns exactly that (it then invents plausible names for held-out tools);
a made-up name can only be copied from the list, after choosing the tool by its description."""

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "kr", "tr", "st", "pl", "gr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")


def _made_up_word(rng: random.Random) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3)))


def make_tool(rng: random.Random, family: str) -> SyntheticTool:
    """A random tool of API family ``family`` (``"api.weather"``, ...)."""
    domain = family.removeprefix("api.")
    d = DOMAINS[domain]
    verb, noun = rng.choice(d.verbs), rng.choice(d.nouns)
    shown = noun
    base = f"{verb}_{noun}"
    if rng.random() < 0.2:
        qual = rng.choice(_QUALIFIERS)
        base, shown = f"{base}_{qual}", f"{noun}_{qual}"
    if rng.random() < 0.3:
        base = f"{rng.choice(d.prefixes)}_{base}"
    name = _camel(base) if rng.random() < 0.12 else base
    if rng.random() < OPAQUE_NAMES:
        tag = _made_up_word(rng)
        name = f"{tag}_{base}" if rng.random() < 0.5 else tag + rng.choice(("", "", str(rng.randint(2, 9))))
    n_req = rng.choice((1, 1, 1, 2, 2, 3))
    n_opt = rng.choice((0, 0, 0, 1, 1, 2))
    pool = list(d.fields)
    rng.shuffle(pool)
    required = pool[:n_req]
    optional_pool = pool[n_req:] + [f for f in _COMMON if f not in pool]
    optional = rng.sample(optional_pool, min(n_opt, len(optional_pool)))
    props: dict[str, Any] = {}
    fields: dict[str, Field] = {}
    req_names: list[str] = []
    for i, f in enumerate(required + optional):
        pname = next((a for a in rng.sample(f.names, len(f.names)) if a not in props), None)
        if pname is None:
            continue
        schema = json.loads(json.dumps(f.schema))
        if i >= len(required) and f.default is not None and rng.random() < 0.6:
            schema["default"] = f.default(rng)
        props[pname] = schema
        fields[pname] = f
        if i < len(required):
            req_names.append(pname)
    by = f" by {_words(req_names[0])}" if req_names and rng.random() < 0.5 else ""
    template = rng.choice(_DESCRIPTIONS.get(verb, ("{verb} a {noun}{by}.",)))
    description = _articles(template.format(noun=_words(shown), nouns=_plural(shown), by=by, verb=_words(verb).capitalize()))
    schema = {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": props, "required": req_names},
        },
    }
    return SyntheticTool(schema, domain, verb, shown, fields)


def sample_arguments(rng: random.Random, tool: SyntheticTool, p_optional: float = 0.5) -> dict[str, Any]:
    """Values for every required parameter and some optional ones, in schema order."""
    params = tool.schema["function"]["parameters"]
    args: dict[str, Any] = {}
    for pname, f in tool.fields.items():
        if pname in params["required"] or rng.random() < p_optional:
            args[pname] = f.sample(rng)
    return args


# ---------------------------------------------------------------------------------------------- requests


def _said(value: Any, rng: random.Random) -> str:
    """A value as a person writes it: lists as ``a, b and c``, the rest as Python/JSON would print them."""
    if isinstance(value, list):
        parts = [str(v) for v in value]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + rng.choice((" and ", ", ")) + parts[-1]
    return str(value)


def _phrase(rng: random.Random, pname: str, f: Field, value: Any) -> str:
    if isinstance(value, bool):
        pairs = f.phrases or (("with {w} on", "with {w} enabled"), ("with {w} off", "with {w} disabled"))
        return rng.choice(pairs[0] if value else pairs[1]).format(w=_words(pname))
    # The parameter's own words sometimes, so both "in Paris" and "with city_name Paris" are seen.
    templates = f.phrases if f.phrases and rng.random() < 0.75 else ("with {w} {v}", "where {w} is {v}", "{w} {v}")
    return rng.choice(templates).format(w=_words(pname), v=_said(value, rng))


def _join(parts: list[str], rng: random.Random) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + rng.choice((" and ", ", ")) + parts[-1]


_PLURAL_VERBS = ("list", "search", "export", "recommend")
_THE_VERBS = ("get", "fetch", "check", "lookup", "estimate", "compute", "set", "summarize", "detect", "find")


def request_text(rng: random.Random, tool: SyntheticTool, args: dict[str, Any]) -> str:
    """A natural request for ``tool`` with ``args``: a verb phrase ("show me", "create") and one phrase per
    stated argument, in a random order (the call lists them in schema order)."""
    parts = [_phrase(rng, k, tool.fields[k], v) for k, v in args.items()]
    rng.shuffle(parts)
    verb = rng.choice(_SAY_VERB.get(tool.verb, (_words(tool.verb),)))
    if tool.verb in _PLURAL_VERBS:
        obj = f"{verb} {_plural(tool.noun)}"
    else:
        noun = _words(tool.noun)
        art = "the" if tool.verb in _THE_VERBS else ("an" if noun[0] in "aeiou" else "a")
        obj = f"{verb} {art} {noun}"
    said = _join(parts, rng)
    template = rng.choice(
        (
            "{Obj} {said}.",
            "Can you {obj} {said}?",
            "Please {obj} {said}.",
            "I'd like to {obj} {said}.",
            "{Obj}, {said}.",
            "Could you {obj} {said} for me?",
        )
    )
    text = template.format(obj=obj, Obj=obj[0].upper() + obj[1:], said=said)
    return _articles(text.replace(" .", ".").replace(" ?", "?").replace(" ,", ","))


def result_of(rng: random.Random, tool: SyntheticTool, args: dict[str, Any]) -> dict[str, Any]:
    """The synthesised result: an echoed argument and one or two of the domain's output fields."""
    out: dict[str, Any] = {}
    if args:
        key = next(iter(args))
        out[key] = args[key]
    for key, sample in DOMAINS[tool.domain].outputs[: rng.randint(1, 2)]:
        out.setdefault(key, sample(rng))
    return out
