"""Built-in demo dataset: SYNTHETIC English review sentences, 3 classes.

This is generated demo data, not real reviews. It exists so that the default
pipeline run (`make run`) works offline with no user data. Texts are short
product/service reviews from eight domains (phones, laptops, headphones,
restaurants, hotels, books, software, airlines), labelled `negative`,
`neutral` or `positive`.

What makes it non-trivial (a bag-of-words model cannot separate it):
- negation flips a clause's polarity ("the screen is not great" -> negative,
  "the service was never disappointing" -> positive), and idioms carry their
  polarity despite a negation word ("I could not be happier", "no complaints"
  -> positive; "I would not recommend it", "hardly worth it" -> negative);
- contrast: in "A but B", "although A, B", "A; however, B" the label is that of
  the main clause B, which always comes last; B may be lukewarm ("..., but
  overall it was just okay" -> neutral) but is never a bare fact;
- mixed sentences without a contrast marker ("great food and awful service",
  "Great screen, awful battery.") are `neutral`; same-polarity pairs keep it;
- lukewarm statements ("average at best", "it does what it says", "not great,
  not terrible") and plain facts ("we stayed for three nights") are `neutral`;
- intensifiers and hedges ("really", "a bit"), openers, two tenses, ~90 aspect
  nouns, ~30 adjectives per polarity, domain-specific event clauses;
- about 4% of labels are flipped at random (label noise), so no model reaches 100%.

Known limits: a finite template grammar (a model can learn the templates
rather than English), some awkward pairings ("a bit flawless"), the rules
above are one consistent convention rather than how every annotator would
label such sentences, and figures measured on it say little about real data.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from distillery.fileio import write_atomically

LABELS = ("negative", "neutral", "positive")  # index = polarity + 1
LABEL_NOISE = 0.04
MAX_CHARS = 199


class _Domain(NamedTuple):
    subjects: tuple[str, ...]
    aspects: tuple[str, ...]
    good_events: tuple[str, ...]
    bad_events: tuple[str, ...]
    facts: tuple[str, ...]


_DOMAINS = (
    _Domain(("this phone", "the handset", "this smartphone"),
            ("screen", "battery", "camera", "speaker", "charger", "case", "fingerprint sensor",
             "build quality", "buttons", "microphone", "price", "software"),
            ("the battery easily lasts two days", "it charges fully in under an hour",
             "photos come out crisp even at night", "it survived a drop onto concrete",
             "calls sound crystal clear"),
            ("the battery died in a day", "it overheats while charging", "calls keep dropping",
             "the screen cracked within a week", "the camera app crashes constantly"),
            ("it comes in three colours", "it uses a USB-C charger", "it has two SIM slots",
             "I switched from an older model")),
    _Domain(("this laptop", "the notebook"),
            ("keyboard", "trackpad", "fan", "display", "hinge", "battery life", "webcam", "ports",
             "performance", "weight", "speakers"),
            ("it boots in seconds", "it stays cool and silent all day",
             "it handles video editing with ease", "it lasts a full workday on one charge"),
            ("the fan roars under the lightest load", "it shuts down at random",
             "two keys stopped working in a month", "it takes ages to boot"),
            ("it has a 14-inch display", "it ships with 16 GB of memory",
             "I use it mostly for spreadsheets", "it came with a spare charger")),
    _Domain(("this headset", "this pair of earbuds"),
            ("sound", "bass", "noise cancelling", "ear cushions", "fit", "controls", "pairing",
             "mic", "carrying case"),
            ("they block out the whole train", "I can wear them all day without noticing",
             "they pair instantly with every device", "the sound stays rich at any volume"),
            ("the left earcup cut out after a week", "they hurt my ears within an hour",
             "the connection drops every few minutes", "the noise cancelling hisses constantly"),
            ("they fold flat for travel", "they connect over Bluetooth",
             "I mostly use them on the bus", "they come with a cable for flights")),
    _Domain(("this restaurant", "the bistro", "this place"),
            ("food", "service", "waiter", "menu", "dessert", "portions", "wine list", "decor",
             "atmosphere", "pasta", "steak", "bread", "prices"),
            ("every dish came out hot and fresh", "the waiter remembered our names",
             "they found us a table right away", "I still think about that pasta"),
            ("we waited an hour for our food", "the soup arrived cold",
             "the waiter forgot our order twice", "they overcharged us", "I got sick the next day"),
            ("we ordered the set menu", "it opens at six", "we went on a Friday night",
             "they take reservations by phone", "it is next to the cinema")),
    _Domain(("this hotel", "the resort", "the inn"),
            ("room", "bed", "breakfast", "pool", "view", "reception", "location", "bathroom",
             "wifi", "towels", "gym", "lobby", "parking"),
            ("they upgraded us to a suite", "check-in took two minutes",
             "housekeeping kept the room spotless every day", "we slept like babies"),
            ("the room smelled of smoke", "the shower ran cold every morning",
             "the air conditioning rattled all night", "they lost our booking"),
            ("we stayed for three nights", "it is near the station", "our room was on the fourth floor",
             "breakfast is served until ten", "we booked it through an agency")),
    _Domain(("this book", "the novel", "the memoir"),
            ("plot", "ending", "characters", "writing", "pacing", "dialogue", "translation", "cover",
             "first chapter", "prose", "narrator", "twist"),
            ("I finished it in one sitting", "the characters stay with you for weeks",
             "the ending gave me chills", "I could not put it down"),
            ("I gave up halfway through", "the plot drags for a hundred pages",
             "the ending makes no sense", "I kept losing track of who was who"),
            ("it has twelve chapters", "it is the second book in a series",
             "I read the paperback edition", "it was picked by my book club")),
    _Domain(("this app", "the software", "this program"),
            ("interface", "sync", "search", "installer", "dashboard", "notifications",
             "settings menu", "customer support", "documentation", "export feature", "login",
             "pricing plan"),
            ("it syncs instantly across all my devices", "support fixed my issue in minutes",
             "the update made it twice as fast", "it saves me hours every week"),
            ("it crashes every time I save", "the update wiped my settings",
             "support never answered my ticket", "I lost a week of work to a sync bug"),
            ("it is available on desktop and mobile", "I use it mainly for work",
             "version 3 came out last month", "it runs on Windows and Mac")),
    _Domain(("this airline", "the flight"),
            ("seat", "legroom", "crew", "boarding", "meal", "entertainment system", "check-in",
             "luggage allowance", "cabin", "announcements"),
            ("we landed twenty minutes early", "the crew went out of their way to help",
             "they rebooked me for free", "my bag was first off the belt"),
            ("the flight was delayed five hours", "they lost my suitcase",
             "we sat on the runway for two hours", "they cancelled with no explanation"),
            ("we flew economy", "the route goes through Frankfurt",
             "I booked the ticket two months ahead", "the plane was an Airbus")),
)
_PLURAL = frozenset(("buttons", "ports", "speakers", "ear cushions", "controls", "portions",
                     "prices", "towels", "characters", "notifications", "announcements"))

_GOOD = ("great", "excellent", "fantastic", "superb", "wonderful", "outstanding", "impressive",
         "brilliant", "lovely", "solid", "reliable", "flawless", "delightful", "terrific",
         "first-rate", "top-notch", "amazing", "good", "pleasant", "exceptional", "stellar",
         "fabulous", "perfect", "phenomenal", "remarkable", "splendid", "satisfying", "dependable")
_BAD = ("terrible", "awful", "horrible", "dreadful", "poor", "bad", "disappointing", "mediocre",
        "abysmal", "atrocious", "useless", "unreliable", "shoddy", "frustrating", "annoying",
        "subpar", "lousy", "pathetic", "appalling", "flimsy", "sloppy", "dire", "woeful",
        "unacceptable", "miserable", "dismal", "rubbish", "inadequate")
_MEH = ("okay", "fine", "average", "ordinary", "adequate", "acceptable", "unremarkable",
        "standard", "passable", "so-so", "middling", "fair", "typical", "serviceable",
        "tolerable", "run of the mill", "nothing special", "average at best", "as expected")
_BOOST = ("really ", "very ", "truly ", "extremely ", "incredibly ", "genuinely ", "so ",
          "pretty ", "quite ", "absolutely ", "somewhat ", "a bit ", "slightly ", "rather ",
          "kind of ", "fairly ")
_NEGATE = ("{a} {be} not {j}", "{a} {be}n't {j}", "{a} {be} never {j}", "{a} {be} hardly {j}",
           "{a} {be} far from {j}", "{a} {be} anything but {j}", "{a} {be} not exactly {j}",
           "{a} {be} not {j} at all", "{a} {be} not remotely {j}", "I would not call {a} {j}",
           "I never found {a} {j}", "nobody could call {a} {j}")
_PLAIN = ("{a} {be} {m}{j}", "{a} {be} {m}{j}", "I found {a} {m}{j}", "{a} felt {m}{j}",
          "{a} {be} {m}{j}, in my opinion", "{a} turned out {m}{j}")
_IDIOMS = {  # polarity -> whole-clause idioms; several carry a negation word on purpose
    1: ("I could not be happier with {s}", "I have no complaints about {a}",
        "not a single problem with {a}", "I can't recommend {s} enough", "{s} never disappoints",
        "I would not change a thing about {s}", "no regrets at all", "{s} did not let me down",
        "I was not disappointed for a second", "{s} is worth every penny",
        "I would go back in a heartbeat", "nothing to complain about"),
    -1: ("I would not recommend {s}", "{s} is hardly worth it", "never again",
         "{s} is not worth the money", "I want my money back", "I regret choosing {s}",
         "{s} did not live up to the hype", "I expected much more from {s}", "save your money",
         "{s} never works when I need it", "not what I was promised", "I would not go back"),
    0: ("{s} does what it says", "{s} does the job", "it is average at best",
        "not great, not terrible", "I was neither impressed nor disappointed", "it is what it is",
        "I have mixed feelings about {s}", "I can't say I loved it or hated it",
        "no strong feelings either way", "{s} is about what you would expect",
        "it was fine, I guess", "some good, some bad", "{s} has its ups and downs"),
}
_FACTS = ("I bought {s} {w}", "I have had {s} for {n} weeks", "{s} was a gift from my {r}",
          "I tried {s} because my {r} suggested it", "I first used {s} {w}",
          "my {r} picked {s} {w}")
_WHEN = ("last month", "in March", "two weeks ago", "on holiday", "for a work trip",
         "last summer", "over the weekend", "in the autumn", "before Christmas")
_REL = ("sister", "brother", "mother", "father", "colleague", "neighbour", "partner", "friend",
        "boss", "cousin", "flatmate")
_NUM = ("two", "three", "four", "five", "six", "eight", "ten", "twelve")
_CONTRAST = ("{A}, but {B}", "{A} but {B}", "although {A}, {B}", "even though {A}, {B}",
             "{A}; however, {B}", "{A}. That said, {B}", "{A}, yet {B}", "while {A}, {B}",
             "{A}. Still, {B}")
_JOIN = ("{A} and {B}", "{A}, and {B}", "{A}, {B}", "{A}. Also, {B}")
_OPENERS = ("", "", "", "", "Honestly, ", "To be fair, ", "In short, ",
            "After a month, ", "Long story short, ", "Well, ")


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.random() * len(seq))]


def _be(aspect: str, past: bool) -> str:
    plural = aspect in _PLURAL
    return ("were" if plural else "was") if past else ("are" if plural else "is")


def _adjective(pol: int):
    return _GOOD if pol > 0 else _BAD if pol < 0 else _MEH


def _polar_clause(rng, dom: _Domain, pol: int, past: bool) -> str:
    """A clause whose meaning has polarity `pol` (+1/-1), in one of four forms."""
    aspect, subj = _pick(rng, dom.aspects), _pick(rng, dom.subjects)
    a, be = "the " + aspect, _be(aspect, past)
    u = rng.random()
    if u < 0.35:  # plain adjective, optionally boosted or hedged
        m = _pick(rng, _BOOST) if rng.random() < 0.4 else ""
        return _pick(rng, _PLAIN).format(a=a, be=be, m=m, j=_pick(rng, _adjective(pol)))
    if u < 0.65:  # negated adjective of the opposite polarity: negation flips
        return _pick(rng, _NEGATE).format(a=a, be=be, j=_pick(rng, _adjective(-pol)))
    if u < 0.85:
        return _pick(rng, dom.good_events if pol > 0 else dom.bad_events)
    if u < 0.93:
        return _pick(rng, _IDIOMS[pol]).format(s=subj, a=a)
    return f"overall {subj} {'was' if past else 'is'} {_pick(rng, _adjective(pol))}"


def _neutral_clause(rng, dom: _Domain, past: bool, facts: bool = True) -> str:
    """A lukewarm opinion or (when `facts`) a plain statement of fact."""
    aspect, subj = _pick(rng, dom.aspects), _pick(rng, dom.subjects)
    u = rng.random() * (1.0 if facts else 0.65)
    if u < 0.35:
        j = _pick(rng, _MEH)
        return _pick(rng, _PLAIN).format(a="the " + aspect, be=_be(aspect, past), m="", j=j)
    if u < 0.55:
        return _pick(rng, _IDIOMS[0]).format(s=subj)
    if u < 0.65:
        return f"overall {subj} {'was' if past else 'is'} just {_pick(rng, _MEH)}"
    if u < 0.85:
        return _pick(rng, dom.facts)
    return _pick(rng, _FACTS).format(s=subj, w=_pick(rng, _WHEN), n=_pick(rng, _NUM),
                                     r=_pick(rng, _REL))


def _clause(rng, dom, pol, past, facts=True):
    if pol == 0:
        return _neutral_clause(rng, dom, past, facts)
    return _polar_clause(rng, dom, pol, past)


def _fragment(rng, dom: _Domain, pol: int) -> str:
    m = _pick(rng, _BOOST) if rng.random() < 0.3 else ""
    return f"{m}{_pick(rng, _adjective(pol))} {_pick(rng, dom.aspects)}"


def _sentence(rng) -> tuple[str, int]:
    """One (text, polarity) pair; the template mix keeps the classes roughly balanced."""
    dom = _pick(rng, _DOMAINS)
    past = rng.random() < 0.5
    sign = 1 if rng.random() < 0.5 else -1
    u = rng.random()
    if u < 0.33:  # one opinion
        text, pol = _polar_clause(rng, dom, sign, past), sign
    elif u < 0.60:  # contrast: the main clause (always last) decides
        pol = 0 if rng.random() < 0.2 else sign
        first = -pol if pol != 0 and rng.random() < 0.8 else (0 if pol != 0 else sign)
        text = _pick(rng, _CONTRAST).format(A=_clause(rng, dom, first, past),
                                            B=_clause(rng, dom, pol, past, facts=False))
    elif u < 0.70:  # two opinions of one polarity
        pol = sign
        if rng.random() < 0.4:
            text = f"{_fragment(rng, dom, pol)}, {_fragment(rng, dom, pol)}"
        else:
            text = _pick(rng, _JOIN).format(A=_polar_clause(rng, dom, pol, past),
                                            B=_polar_clause(rng, dom, pol, past))
    elif u < 0.79:  # opposite opinions, no contrast marker: mixed -> neutral
        pol = 0
        if rng.random() < 0.4:
            text = f"{_fragment(rng, dom, sign)}, {_fragment(rng, dom, -sign)}"
        else:
            text = _pick(rng, _JOIN).format(A=_polar_clause(rng, dom, sign, past),
                                            B=_polar_clause(rng, dom, -sign, past))
    else:  # lukewarm or factual, sometimes two of them
        pol = 0
        text = _neutral_clause(rng, dom, past)
        if rng.random() < 0.3:
            text = _pick(rng, _JOIN).format(A=text, B=_neutral_clause(rng, dom, past))
    text = _pick(rng, _OPENERS) + text
    text = text[0].upper() + text[1:] + ("!" if rng.random() < 0.15 else ".")
    return text, pol


def make_demo_dataset(n_rows: int, seed: int,
                      eval_fraction: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate `n_rows` distinct synthetic reviews and split them into (train, eval).

    Deterministic in (n_rows, seed, eval_fraction). Texts are deduplicated before the
    split, so no text is in both frames. Columns: `text`, `label` (one of LABELS).
    """
    if n_rows < 2:
        raise ValueError(f"n_rows must be >= 2, got {n_rows}")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    n_eval = min(max(round(n_rows * eval_fraction), 1), n_rows - 1)
    rng = np.random.default_rng(seed)
    rows: dict[str, str] = {}  # insertion-ordered: the order depends on the seed only
    for _ in range(50 * n_rows + 1000):
        if len(rows) == n_rows:
            break
        text, pol = _sentence(rng)
        if rng.random() < LABEL_NOISE:  # flip to one of the other two labels
            pol = (pol + 1 + (1 if rng.random() < 0.5 else 2)) % 3 - 1
        if len(text) <= MAX_CHARS and text not in rows:
            rows[text] = LABELS[pol + 1]
    if len(rows) < n_rows:
        raise ValueError(f"could only generate {len(rows)} distinct texts, asked for {n_rows}")
    frame = pd.DataFrame({"text": list(rows), "label": list(rows.values())})
    order = rng.permutation(n_rows)
    eval_df = frame.iloc[order[:n_eval]].reset_index(drop=True)
    train_df = frame.iloc[order[n_eval:]].reset_index(drop=True)
    return train_df, eval_df


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    write_atomically(path, lambda tmp: df.to_csv(tmp, index=False, lineterminator="\n", encoding="utf-8"))


def write_demo_dataset(out_dir: str | Path, n_rows: int, seed: int,
                       eval_fraction: float = 0.2) -> tuple[Path, Path]:
    """Write `train.csv` and `eval.csv` (UTF-8, header `text,label`) into `out_dir`, atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_df, eval_df = make_demo_dataset(n_rows, seed, eval_fraction)
    train_path, eval_path = out_dir / "train.csv", out_dir / "eval.csv"
    _write_csv_atomic(train_df, train_path)
    _write_csv_atomic(eval_df, eval_path)
    return train_path, eval_path
