"""Argument values a small model can get right: a forced call's schema narrowed to the request.

A 135M model writing a call's arguments under the tool's plain JSON-Schema grammar paraphrases
the values it should copy (a timer label cut short, "Paris, France" for "Paris"), invents
numbers and adds optional fields nobody asked for. On the engines that write calls as text
(llama.cpp) the grammar of a forced call is therefore built from the tool's schema *narrowed to
the user's last turn*, for every tool alike (nothing here knows a tool's name):

- a free string (``"type": "string"`` without ``enum``/``const``/``pattern``/``format``) is one
  of the phrases of the user's words (1 to :data:`MAX_SPAN_WORDS` consecutive words, their
  case kept, punctuation trimmed at the ends) that fit its length bounds;
- an ``integer`` / ``number`` is one of the numbers the user said (digits, or English number
  words: "ten", "twenty-five", "two hundred") within its bounds; when the user said none, the
  schema is left as it was;
- an ``enum`` of strings the user *mentions* (a value is a prefix of a word, "eur" of
  "euros", or a word is the value but for a short ending, "hour" for "hours"): an optional
  property becomes required with the mentioned values only, and an optional property whose
  values nobody mentioned is left out (it is optional: the user did not ask for it); a required
  one keeps only the mentioned values unless another property shares its values (which one the
  user meant cannot be told from a mention: from/to currencies), then it is left as it was.

The narrowed schema is stricter than the tool's (each value still fits it), so a call is valid
against the tool's own schema. Where narrowing would leave no value (a string no phrase fits),
the property keeps its schema.
"""

from __future__ import annotations

import re
from typing import Any, Callable

MAX_SPAN_WORDS = 6
MAX_SPANS = 400  # the grammar's alternatives for one string: a long turn keeps its first phrases
_TRIM = "\"'“”‘’.,!?;:()[]{}<>…"

_UNITS = {word: value for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {word: 10 * (i + 2) for i, word in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_TOKEN = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|[a-z]+")


def last_user_text(messages: list[dict[str, Any]]) -> str | None:
    """The content of the last message when it is the user's (a call answers that turn)."""
    if not messages or messages[-1].get("role") != "user":
        return None
    content = messages[-1].get("content")
    return content if isinstance(content, str) else None


# English function words: a phrase starting or ending with one is left out ("for the pasta" ->
# "the pasta" -> "pasta"); general English, nothing about any tool.
FUNCTION_WORDS = frozenset("""a an the and or but nor of to in on at for from by with about as into onto
over under up down out off is are was were be been being am do does did have has had can could will
would shall should may might must i me my mine you your yours we us our it its this that these those
there here please just so then than too very what whats which who whom when where why how some any all
each every no not if also it's i'm don't can't""".split())


def spans(text: str, max_words: int = MAX_SPAN_WORDS, avoid: frozenset[str] = frozenset()) -> list[str]:
    """The phrases of ``text``: runs of 1..max_words consecutive words, trimmed of punctuation at
    both ends, that neither start nor end with a function word nor hold a word of ``avoid``
    (lower case; what other arguments already took), in order of appearance, once each. If
    that leaves none: every run, trimmed."""
    words = text.split()
    out: dict[str, None] = {}
    loose: dict[str, None] = {}
    for start in range(len(words)):
        for end in range(start + 1, min(start + max_words, len(words)) + 1):
            phrase = " ".join(words[start:end]).strip(_TRIM)
            if not phrase or not any(c.isalnum() for c in phrase):
                continue
            loose.setdefault(phrase, None)
            inner = [w.strip(_TRIM).lower() for w in words[start:end]]
            if inner[0] in FUNCTION_WORDS or inner[-1] in FUNCTION_WORDS or any(
                    _same_word(piece, a) or _same_word(a, piece)
                    for w in inner for piece in re.findall(r"[a-z0-9]+", w) for a in avoid):
                continue
            out.setdefault(phrase, None)
    return list(out or loose)[:MAX_SPANS]


def numbers(text: str) -> list[int | float]:
    """The numbers ``text`` says, in order, once each: digits ("7.50" -> 7.5, "1,000") and
    English number words ("twenty-five", "two hundred and six", "ten")."""
    found: list[int | float] = []

    def add(value: float) -> None:
        value = int(value) if float(value).is_integer() else value
        if value not in found:
            found.append(value)

    value: int | None = None  # the number words read so far (None: not in a number)
    total = 0  # its thousands and millions
    last = ""  # the kind of the last number word: unit, ten, hundred, scale
    tokens = _TOKEN.findall(text.lower())
    for i, token in enumerate(tokens):
        kind = ("unit" if token in _UNITS else "ten" if token in _TENS else
                "hundred" if token == "hundred" else "scale" if token in _SCALES else "")
        if token == "and" and value is not None and i + 1 < len(tokens) and (
                tokens[i + 1] in _UNITS or tokens[i + 1] in _TENS):
            continue  # "two hundred and six"
        # A word that cannot continue the number read so far ends it ("five six": two numbers).
        continues = value is not None and (
            (kind == "unit" and last in ("ten", "hundred", "scale") and (last != "ten" or _UNITS[token] < 10))
            or (kind == "ten" and last in ("hundred", "scale"))
            or (kind in ("hundred", "scale") and last in ("unit", "ten", "hundred")))
        if value is not None and not continues:
            add(total + value)
            value, total, last = None, 0, ""
        if token[0].isdigit():
            add(float(token.replace(",", "")))
        elif kind in ("unit", "ten"):
            value = (value or 0) + (_UNITS.get(token) or _TENS.get(token) or 0)
            last = kind
        elif kind == "hundred" and value is not None:
            value, last = value * 100, "hundred"
        elif kind == "scale" and value is not None:
            total, value, last = total + value * _SCALES[token], 0, "scale"
    if value is not None:
        add(total + value)
    return found


_CODE = re.compile(r"^[A-Z]{2,5}$")


def is_code(value: Any) -> bool:
    """An enum value written as a code (an acronym: "USD", "UTC", "EN")."""
    return isinstance(value, str) and bool(_CODE.match(value))


def _subsequence(short: str, long: str) -> bool:
    letters = iter(long)
    return all(char in letters for char in short)


def _same_word(said: str, word: str) -> bool:
    """``said`` (the user's) is ``word`` or ``word`` with a short ending ("hours" for "hour")."""
    if said == word:
        return True
    return len(word) >= 4 and said.startswith(word) and len(said) - len(word) <= 3


def mentions(value: str, words: list[str], expansion: str = "", ignore: frozenset[str] = frozenset()
             ) -> list[tuple[int, int, int]]:
    """Where the user's ``words`` (lower case) name the enum ``value``: (strength, first word,
    word count) for each place, strongest first.

    - 3: the value is a word's prefix ("eur" of "euros", "celsius"), or the word is the value
      but for a short ending ("hour" for "hours");
    - 2: a code's letters in order in one or two words starting with its first letter, the
      second word beginning with one of them ("INR": "Indian rupees", "CAD": "Canadian");
      or two or more consecutive words of the model's ``expansion`` of a code ("British pound");
    - 1: one word of the expansion ("dollars" for "US Dollar"), other than the ``ignore``
      words (those of the property's own description).
    """
    low = value.lower()
    found: list[tuple[int, int, int]] = []
    for i, word in enumerate(words):
        if (len(low) >= 3 and word.startswith(low)) or word == low or (
                len(word) >= 4 and low.startswith(word) and len(low) - len(word) <= 2):
            found.append((3, i, 1))
    if is_code(value):
        for i, word in enumerate(words):
            if not word or word[0] != low[0] or not word.isalpha():
                continue
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if nxt.isalpha() and any(_subsequence(low[:j], word) and low[j] == nxt[0] and _subsequence(low[j:], nxt)
                                     for j in range(1, len(low))):
                found.append((2, i, 2))
            elif len(word) > len(low) and _subsequence(low, word):
                found.append((2, i, 1))
        known = [w for w in re.findall(r"[a-z]+", expansion.lower()) if len(w) >= 3 and w not in ignore
                 and w not in _FILLER]
        hits = [i for i, word in enumerate(words) if any(_same_word(word, w) for w in known)]
        for i in hits:
            run = 1
            while i + run in hits:
                run += 1
            found.append((2 if run >= 2 else 1, i, run))
    return sorted(found, key=lambda m: (-m[0], -m[2], m[1]))


_FILLER = frozenset("the and for are was its his her with from that this which what".split())


def _named(group: list[tuple[str, list[str]]], words: list[str], expansions: dict[str, str],
           ignore: frozenset[str]) -> list[str]:
    """The values of one enum that the user names, in the order said: each place in ``words``
    goes to the value that names it most strongly (a longer mention first: "Canadian dollars" is
    CAD, not CAD and USD)."""
    candidates = []
    for value in dict.fromkeys(v for _, values in group for v in values):
        for strength, start, count in mentions(value, words, expansions.get(value, ""), ignore):
            candidates.append((strength, count, start, value))
    taken: set[int] = set()
    named: dict[str, int] = {}
    for _strength, count, start, value in sorted(candidates, key=lambda c: (-c[0], -c[1], c[2])):
        places = set(range(start, start + count))
        if places & taken:
            continue
        taken |= places
        named[value] = min(named.get(value, start), start)
    return sorted(named, key=named.get)


def narrow(schema: Any, text: str, expand: Callable[[str, str], str] | None = None,
           avoid: frozenset[str] = frozenset()) -> Any:
    """``schema`` (an object's JSON Schema) with its properties narrowed to the values the user
    said in ``text`` (the rules are in the module's docstring). ``expand(value, description)``:
    what a code in an enum stands for, in words (the model's guess), or None. ``avoid``: words
    no free string should hold (the tool's name: "timer" is not a timer's label). Nested objects
    are narrowed too; the input is not changed."""
    if not isinstance(schema, dict) or schema.get("type") != "object" or not isinstance(
            schema.get("properties"), dict):
        return schema
    words = re.findall(r"[a-z0-9]+", text.lower())
    said = numbers(text)
    required = [name for name in schema.get("required", []) if name in schema["properties"]]
    enums = {name: list(prop["enum"]) for name, prop in schema["properties"].items()
             if isinstance(prop, dict) and isinstance(prop.get("enum"), list) and prop["enum"]
             and all(isinstance(v, str) for v in prop["enum"])}
    # Properties whose enums share values form one group: the values the user names go to them
    # in the order the properties are listed (from ... to ...), one each.
    assigned: dict[str, list[str]] = {}
    done: set[str] = set()
    for name in enums:
        if name in done:
            continue
        group = [(key, values) for key, values in enums.items() if set(values) & set(enums[name])]
        done |= {key for key, _ in group}
        descriptions = " ".join(str(schema["properties"][key].get("description", "")) for key, _ in group)
        ignore = frozenset(re.findall(r"[a-z]+", descriptions.lower()))
        expansions = {}
        if expand is not None:
            for value in dict.fromkeys(v for _, values in group for v in values):
                if is_code(value):
                    expansions[value] = expand(value, str(schema["properties"][group[0][0]].get("description", ""))) or ""
        named = _named(group, words, expansions, ignore)
        if len(group) == 1:
            assigned[name] = named
        else:
            for (key, values), value in zip(group, [v for v in named if v in set().union(*(set(vs) for _, vs in group))]):
                if value in values:
                    assigned[key] = [value]
    # A free string does not repeat what the other arguments say: the numbers and the words
    # that named an enum value are not in its phrases.
    taken = set(avoid) | {w for w in words if w.isdigit() or w in _UNITS or w in _TENS or w in _SCALES}
    for values in assigned.values():
        for value in values:
            taken |= {words[i] for _, start, count in mentions(value, words) for i in range(start, start + count)}
    phrases = spans(text, avoid=frozenset(taken))
    properties: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        if not isinstance(prop, dict):
            properties[name] = prop
            continue
        if name in enums:
            values = assigned.get(name, [])
            if name not in required:
                if not values:
                    continue  # optional and not asked for: left out
                required.append(name)
            properties[name] = {**prop, "enum": values} if values else prop
        elif prop.get("type") == "string" and not any(k in prop for k in ("enum", "const", "pattern", "format")):
            fits = [p for p in phrases if prop.get("minLength", 0) <= len(p) <= prop.get("maxLength", len(p))]
            if fits:
                properties[name] = {**prop, "enum": fits}
                if name not in required:
                    required.append(name)  # a small model leaves every optional string out
            else:
                properties[name] = prop
        elif prop.get("type") in ("integer", "number") and "enum" not in prop:
            fits = [n for n in said if _fits_number(n, prop)]
            properties[name] = {**prop, "enum": fits} if fits else prop
        elif prop.get("type") == "object":
            properties[name] = narrow(prop, text, expand, avoid)
        else:
            properties[name] = prop
    return {**schema, "properties": properties, "required": required}


def _fits_number(value: int | float, prop: dict[str, Any]) -> bool:
    if prop.get("type") == "integer" and not float(value).is_integer():
        return False
    if "minimum" in prop and value < prop["minimum"]:
        return False
    if "maximum" in prop and value > prop["maximum"]:
        return False
    if "exclusiveMinimum" in prop and not isinstance(prop["exclusiveMinimum"], bool) and value <= prop["exclusiveMinimum"]:
        return False
    if "exclusiveMaximum" in prop and not isinstance(prop["exclusiveMaximum"], bool) and value >= prop["exclusiveMaximum"]:
        return False
    if "multipleOf" in prop and prop["multipleOf"] and (value / prop["multipleOf"]) % 1:
        return False
    return True
