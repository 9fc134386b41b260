"""Constrained decoding: the strings an answer copies from the sentence must be in it.

A small model asked to copy entities from a sentence often writes a string the sentence
does not hold (a paraphrase, a corrected spelling, two words run together); scoring drops
such a string as ``unaligned`` and extraction throws it away. `SentenceConstraint`, a
transformers `LogitsProcessor`, rules those strings out during greedy generation instead:

- Per batch row, the answer generated so far runs through a small JSON state machine
  (objects, arrays, keys, strings and their escapes).
- Inside a string holding an entity text (a value, or a relation argument), only tokens
  whose text keeps the string a substring of that row's sentence are allowed (exact,
  case-sensitive); the closing quote only once the string is a substring with more than
  whitespace. Of JSON's escapes only the simple ones (``\\"``, ``\\\\``, ``\\/``,
  ``\\n``, ``\\t``, ``\\r``, ``\\b``, ``\\f``) can be written, none by ``\\u``.
- Keys of the answer object can be held to the types asked (`Constraint.keys`).
- Scoring places the k-th copy of a string at its k-th occurrence, and the k-th copy of a
  relation pair at its k-th pair of occurrences: a copy with none left is not closed. Where
  it must close (a string at the sentence's end cannot grow), the list under that key is
  closed after it: greedy decoding that wrote one spent copy would write it again.
- Outside strings, inside the answer's object or array, only JSON punctuation (braces,
  brackets, commas, colons) and whitespace: no bare word, which a JSON repair would read
  as a string. The punctuation follows JSON's grammar: after a key only a colon, after a
  value only a comma or the container's closer, after a comma a key or a value (no
  ``"a", "[]"``, which a repair would turn into strings the sentence does not hold).
  Given entities (`Constraint.numbers` = N), numbers 1..N too, and no string but the keys. Before the answer opens and after it closes the model is free, but for
  the strings it quotes there (held as entity texts are); the end-of-sequence token is
  never allowed inside a string.

Admissibility is decided on text, never on the sentence's token ids: a span tokenises
differently inside the sentence (" pain") than on its own ("pain"), and the model may
split it any way. Each candidate token's bytes are appended to the string so far and
the result is looked up in the sentence's bytes (UTF-8, so a token holding half of a
multi-byte character is handled like any other). The byte text of every vocabulary token
is computed once per tokenizer (`vocabulary`, cached); per sentence, the tokens that are a
prefix of the text at each position are indexed once, so a step inside a string takes the
union of a few precomputed id lists plus a check of the ~200 tokens holding a quote or a
backslash, and the allowed set of each parser state is cached.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch
from transformers import LogitsProcessor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Constraint:
    """What one answer may contain. ``sentence``: every entity string (a value or a
    relation argument) must be a substring of it. ``keys``: the keys the answer object may
    have (the types asked); empty = any key. ``numbers``: given entities, the answer names
    the N listed entities by number, so numbers are held to 1..N and the only strings are
    keys; None = the answer copies texts."""

    sentence: str
    keys: tuple[str, ...] = ()
    numbers: int | None = None


# --- the vocabulary as bytes --------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE vocabularies)."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in visible:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


_BYTE_OF_CHAR = {c: b for b, c in _bytes_to_unicode().items()}


class Vocabulary:
    """The bytes every token id stands for (None: a special token, or no text), and the
    indexes the processor looks tokens up by. Built once per tokenizer (`vocabulary`)."""

    def __init__(self, texts: Sequence[bytes | None]) -> None:
        self.texts: list[bytes | None] = list(texts)
        self.size = len(self.texts)
        # "plain" tokens: text without a quote or a backslash, so inside a string they only
        # append their bytes; these are looked up by text.
        self.by_text: dict[bytes, list[int]] = {}
        structured, quotes, openers, textless, spaces, to_check, to_check_numbers = [], [], [], [], [], [], []
        for i, t in enumerate(self.texts):
            if not t:
                textless.append(i)
                continue
            if b'"' in t or b"\\" in t:
                structured.append(i)
            else:
                self.by_text.setdefault(t, []).append(i)
            if b'"' in t:
                quotes.append(i)
            if b"{" in t or b"[" in t:
                openers.append(i)
            if set(t) <= _SPACES:
                spaces.append(i)
            elif set(t) <= _PUNCTUATION:
                to_check.append(i)
            if set(t) <= _NUMBERS and not set(t) <= _SPACES:
                to_check_numbers.append(i)
        self.max_len = max((len(t) for t in self.by_text), default=0)
        self.structured = _ids(structured)  # checked one by one inside strings
        # ... as (id, the plain text before the first quote or backslash, the rest)
        self.structured_parts = [(i, t[:j], t[j:]) for i in structured
                                 for t in [self.texts[i]] for j in [_plain_end(t)]]
        self.quotes = _ids(quotes)  # may open or close a string
        self.openers = _ids(openers)  # may open the answer
        # Inside the answer, outside strings: special tokens and whitespace are allowed, JSON
        # punctuation (given entities: and digits) is checked against the grammar, the rest
        # refused.
        self.free_inside = _ids(sorted(textless + spaces))
        self.to_check, self.to_check_numbers = _ids(to_check), _ids(to_check_numbers)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Vocabulary:
        size = len(tokenizer)
        special = set(tokenizer.all_special_ids)
        special |= {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items()
                    if getattr(tok, "special", False)}
        pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
        plain = [p for i, p in enumerate(pieces) if i not in special and p is not None]
        if plain and all(c in _BYTE_OF_CHAR for p in plain for c in p):
            # Byte-level BPE (GPT-2, SmolLM2, Qwen2, Llama 3): each character is one byte.
            texts = [None if i in special or p is None else bytes(_BYTE_OF_CHAR[c] for c in p)
                     for i, p in enumerate(pieces)]
        else:
            texts = cls._decoded_texts(tokenizer, size, special)
        return cls(texts)

    @staticmethod
    def _decoded_texts(tokenizer, size: int, special: set[int]) -> list[bytes | None]:
        """Other tokenizers: each token's text as decoding after an anchor gives it (a
        SentencePiece decoder drops a word's leading space at the start of a sequence).
        A token that decodes to an incomplete character (U+FFFD) is given no text."""
        anchor = tokenizer.encode("a", add_special_tokens=False)
        base = tokenizer.decode(anchor)
        decoded = tokenizer.batch_decode([anchor + [i] for i in range(size)], clean_up_tokenization_spaces=False)
        texts: list[bytes | None] = []
        for i, text in enumerate(decoded):
            piece = text[len(base):] if text.startswith(base) else None
            texts.append(None if i in special or not piece or "\ufffd" in piece else piece.encode("utf-8"))
        return texts


def _ids(found: Sequence[int]) -> np.ndarray:
    return np.array(found, dtype=np.int64)


def _plain_end(text: bytes) -> int:
    """Where the first quote or backslash of ``text`` is (its length if none)."""
    return min((j for j in (text.find(b'"'), text.find(b"\\")) if j >= 0), default=len(text))


_VOCABULARIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vocabulary(tokenizer) -> Vocabulary:
    """The tokenizer's `Vocabulary`, built on first use and cached while the tokenizer lives."""
    try:
        return _VOCABULARIES[tokenizer]
    except KeyError:
        vocab = _VOCABULARIES[tokenizer] = Vocabulary.from_tokenizer(tokenizer)
        return vocab


# --- the answer's parser state --------------------------------------------------------------

# Container stack entries.
_ARRAY, _OBJECT_KEY, _OBJECT_VALUE = 0, 1, 2  # an object expecting a key / anything else
# What the string being written is.
_OUTSIDE, _KEY, _TEXT = 0, 1, 2
_QUOTE, _BACKSLASH, _OPEN_OBJECT, _OPEN_ARRAY = 34, 92, 123, 91
_CLOSE_OBJECT, _CLOSE_ARRAY = 125, 93
_COMMA, _COLON = 44, 58
# What an answer may hold inside its object or array, outside strings (given entities: and digits).
_SPACES = frozenset(b" \t\r\n")
_PUNCTUATION = _SPACES | frozenset(b'[]{},:"')
_NUMBERS = _PUNCTUATION | frozenset(b"0123456789")
_ESCAPES = {34: b'"', 92: b"\\", 47: b"/", 110: b"\n", 116: b"\t", 114: b"\r", 98: b"\b", 102: b"\f"}
# Character -> the letter escaping it, for the escapes a plain token can end ("\\" then "n").
_ESCAPED_BY = {char[0]: bytes((letter,)) for letter, char in _ESCAPES.items() if letter not in (34, 92)}


# What JSON's grammar lets come next outside strings, inside the answer (_ANY: not held,
# before the answer opens and after it closes).
_ANY, _VALUE, _VALUE_OR_CLOSE, _KEY_NEXT, _KEY_OR_CLOSE, _COLON_NEXT, _COMMA_OR_CLOSE = range(7)
_OPENS_VALUE = (_ANY, _VALUE, _VALUE_OR_CLOSE)
_OPENS_STRING = (_ANY, _VALUE, _VALUE_OR_CLOSE, _KEY_NEXT, _KEY_OR_CLOSE)


@dataclass(frozen=True)
class _State:
    """Where one answer is: the open containers, what may come next outside strings, the
    string being written (its kind and its decoded content) with a pending backslash, and
    the digits of the number being written (given entities)."""

    stack: tuple[int, ...] = ()
    kind: int = _OUTSIDE
    content: bytes = b""
    escape: bool = False
    digits: bytes = b""
    expect: int = _ANY


class _Rules:
    """One constraint's tests, on bytes, and the allowed token sets of its states."""

    def __init__(self, constraint: Constraint, vocab: Vocabulary) -> None:
        self.constraint = constraint
        self.vocab = vocab
        self.sentence = constraint.sentence.encode("utf-8")
        self.keys = tuple(k.encode("utf-8") for k in constraint.keys)
        self.numbers = constraint.numbers
        self._at: dict[tuple[bytes, int, bytes], list[int]] = {}
        self._allowed: dict[_State, tuple[bool, np.ndarray]] = {}
        self._tails: dict[tuple[tuple[int, ...], int, bytes], bool] = {}
        self._quote_ids = self._ids_closing_only()

    # A transition over one token's bytes; None when `check` and a rule is broken.
    def advance(self, state: _State, data: bytes, check: bool) -> _State | None:
        stack, kind, content, escape, digits = state.stack, state.kind, state.content, state.escape, state.digits
        expect = state.expect
        sentence, keys, numbers = self.sentence, self.keys, self.numbers
        for byte in data:
            if kind != _OUTSIDE:
                if escape:
                    escape = False
                    char = _ESCAPES.get(byte)
                    if char is None or kind == _KEY:
                        if check:
                            return None
                        continue
                    content += char
                    if check and sentence.find(content) < 0:
                        return None
                elif byte == _BACKSLASH:
                    if check and kind == _KEY:
                        return None
                    escape = True
                elif byte == _QUOTE:
                    if check:
                        if kind == _KEY and keys and content not in keys:
                            return None
                        if kind == _TEXT and not content.strip():
                            return None
                    kind, content = _OUTSIDE, b""
                    if stack and stack[-1] == _OBJECT_KEY:  # a key closed
                        stack, expect = (*stack[:-1], _OBJECT_VALUE), _COLON_NEXT
                    elif stack:
                        expect = _COMMA_OR_CLOSE
                else:
                    content += bytes((byte,))
                    if check:
                        if kind == _TEXT:
                            if sentence.find(content) < 0:
                                return None
                        elif keys and not any(k.startswith(content) for k in keys):
                            return None
                continue
            if 48 <= byte <= 57 and stack:
                if numbers is None:
                    if check:
                        return None
                else:
                    if check and not digits and expect not in _OPENS_VALUE:
                        return None
                    digits += bytes((byte,))
                    if check and (digits[0] == 48 or int(digits) > numbers):
                        return None
                    expect = _COMMA_OR_CLOSE if expect != _ANY else _ANY
                continue
            digits = b""
            if byte in _SPACES:
                continue
            if check and stack and not self._fits(byte, stack, expect):
                return None
            if byte == _QUOTE:
                if len(stack) == 1 and stack[-1] == _OBJECT_KEY:
                    kind = _KEY
                else:  # a value, an array element, a nested key: text copied from the sentence
                    if check and numbers is not None:
                        return None
                    kind = _TEXT
                content = b""
                if expect != _ANY:
                    expect = _VALUE  # set again when the string closes
            elif byte == _OPEN_OBJECT:
                stack, expect = (*stack, _OBJECT_KEY), _KEY_OR_CLOSE
            elif byte == _OPEN_ARRAY:
                stack, expect = (*stack, _ARRAY), _VALUE_OR_CLOSE
            elif byte == _CLOSE_ARRAY:
                if stack and stack[-1] == _ARRAY:
                    stack = stack[:-1]
                    expect = _COMMA_OR_CLOSE if stack else _ANY
            elif byte == _CLOSE_OBJECT:
                if stack and stack[-1] != _ARRAY:
                    stack = stack[:-1]
                    expect = _COMMA_OR_CLOSE if stack else _ANY
            elif stack and byte == _COMMA:
                if stack[-1] == _ARRAY:
                    expect = _VALUE
                else:
                    stack, expect = (*stack[:-1], _OBJECT_KEY), _KEY_NEXT
            elif stack and stack[-1] != _ARRAY and byte == _COLON:
                stack, expect = (*stack[:-1], _OBJECT_VALUE), _VALUE
        if check and escape and not any(sentence.find(content + char) >= 0 for char in _ESCAPES.values()):
            return None  # a backslash that no escape can follow
        return _State(stack, kind, content, escape, digits, expect)

    @staticmethod
    def _fits(byte: int, stack: tuple[int, ...], expect: int) -> bool:
        """Whether JSON's grammar allows ``byte`` (not a space or a digit) next, inside the
        answer, outside strings."""
        if byte not in _PUNCTUATION:
            return False
        if expect == _ANY:
            return True
        if byte == _QUOTE:
            return expect in _OPENS_STRING
        if byte in (_OPEN_OBJECT, _OPEN_ARRAY):
            return expect in _OPENS_VALUE
        if byte == _CLOSE_ARRAY:
            return stack[-1] == _ARRAY and expect in (_VALUE_OR_CLOSE, _COMMA_OR_CLOSE)
        if byte == _CLOSE_OBJECT:
            return stack[-1] != _ARRAY and expect in (_KEY_OR_CLOSE, _COMMA_OR_CLOSE)
        if byte == _COMMA:
            return expect == _COMMA_OR_CLOSE
        return expect == _COLON_NEXT  # the colon

    def allowed(self, state: _State) -> tuple[bool, np.ndarray]:
        """(only, ids): with ``only`` the ids allowed, else the ids refused."""
        found = self._allowed.get(state)
        if found is None:
            if len(self._allowed) > 4096:
                self._allowed.clear()
            found = self._allowed[state] = self._compute(state)
        return found

    def _compute(self, state: _State) -> tuple[bool, np.ndarray]:
        vocab = self.vocab
        if state.kind == _OUTSIDE:
            if state.stack:
                # Judged by their bytes, not followed through: a token such as "]}." is
                # refused even where its "}" closes the answer ("]}" then "." are not).
                candidates = vocab.to_check if self.numbers is None else vocab.to_check_numbers
                passing = [i for i in candidates.tolist() if self.advance(state, vocab.texts[i], True) is not None]
                return True, np.union1d(vocab.free_inside, np.array(passing, dtype=np.int64))
            # Before the answer opens, or after it closed: free but for what opens a string or one.
            candidates = np.union1d(vocab.quotes, vocab.openers)
            failing = [i for i in candidates.tolist() if self.advance(state, vocab.texts[i], True) is None]
            return False, np.array(failing, dtype=np.int64)
        if state.kind == _KEY and not self.keys:
            return False, np.empty(0, dtype=np.int64)
        ids: set[int] = set()
        if state.escape:  # a plain token whose first letter ends the escape ("\\" then "tp")
            for position in _ends(self.sentence, state.content):
                letter = _ESCAPED_BY.get(self.sentence[position])
                if letter is not None:
                    ids.update(self._tokens_at(self.sentence, position + 1, letter))
        else:
            if state.kind == _TEXT:
                texts: Iterable[tuple[bytes, int]] = ((self.sentence, p) for p in _ends(self.sentence, state.content))
            else:
                texts = ((k, len(state.content)) for k in self.keys if k.startswith(state.content))
            for text, position in texts:
                ids.update(self._tokens_at(text, position))
        ids.update(self._structured_ok(state))
        if not ids:  # a dead end (a whitespace-only string at the sentence's end): close it
            log.debug("no token continues %r; allowing the closing quote", state.content)
            ids.update(self._quote_ids)
        return True, np.array(sorted(ids), dtype=np.int64)

    def _structured_ok(self, state: _State) -> list[int]:
        """The tokens with a quote or a backslash allowed in a string state. Their plain
        start is looked up once per distinct start; what follows a closing quote is judged
        once per container stack (it does not depend on the string)."""
        if state.escape:
            return [i for i in self.vocab.structured.tolist()
                    if self.advance(state, self.vocab.texts[i], True) is not None]
        found, leads = [], {}
        for i, lead, rest in self.vocab.structured_parts:
            content = state.content + lead
            ok = leads.get(lead)
            if ok is None:
                ok = leads[lead] = self._extends(state.kind, content)
            if not ok:
                continue
            if rest[0] == _BACKSLASH:
                if self.advance(replace(state, content=content), rest, True) is not None:
                    found.append(i)
            elif self._closes(state.kind, content) and self._after_closing(state.stack, state.kind, rest[1:]):
                found.append(i)
        return found

    def _extends(self, kind: int, content: bytes) -> bool:
        if kind == _TEXT:
            return self.sentence.find(content) >= 0
        return not self.keys or any(k.startswith(content) for k in self.keys)

    def _closes(self, kind: int, content: bytes) -> bool:
        if kind == _TEXT:
            return bool(content.strip())
        return not self.keys or content in self.keys

    def _after_closing(self, stack: tuple[int, ...], kind: int, tail: bytes) -> bool:
        key = (stack, kind, tail)
        ok = self._tails.get(key)
        if ok is None:  # the tail judged from the state after the string closed
            closed = self.advance(_State(stack, kind), b'"', False)
            ok = self._tails[key] = self.advance(closed, tail, True) is not None
        return ok

    def _tokens_at(self, text: bytes, position: int, lead: bytes = b"") -> list[int]:
        """Plain tokens whose text is ``lead`` then a prefix of ``text[position:]`` (a
        non-empty text)."""
        key = (text, position, lead)
        found = self._at.get(key)
        if found is None:
            by_text, found = self.vocab.by_text, list(self.vocab.by_text.get(lead, ())) if lead else []
            for end in range(position + 1, min(len(text), position + self.vocab.max_len - len(lead)) + 1):
                found += by_text.get(lead + text[position:end], ())
            self._at[key] = found
        return found

    def _ids_closing_only(self) -> list[int]:
        return [i for i in self.vocab.quotes.tolist() if self.vocab.texts[i] == b'"']


def _ends(text: bytes, content: bytes) -> list[int]:
    """Positions right after each occurrence of ``content`` in ``text`` (overlapping; every
    position when it is empty), those where something follows."""
    if not content:
        return list(range(len(text)))
    ends, start = [], text.find(content)
    while start >= 0:
        if start + len(content) < len(text):
            ends.append(start + len(content))
        start = text.find(content, start + 1)
    return ends


@lru_cache(maxsize=512)
def _rules(constraint: Constraint, vocab: Vocabulary) -> _Rules:
    """Rules are kept across batches: an evaluator asks about the same sentences every round."""
    return _Rules(constraint, vocab)


def clear_caches() -> None:
    """Forget the sentences' indexes and allowed sets (timings from cold caches)."""
    _rules.cache_clear()


# --- the processor ----------------------------------------------------------------------------


class SentenceConstraint(LogitsProcessor):
    """Masks, per batch row, the tokens that would break that row's `Constraint` (None:
    the row is free). Made for one `generate` call: the first call's input length is where
    the answers start. ``seconds`` and ``steps`` record the time spent masking."""

    def __init__(self, tokenizer, constraints: Sequence[Constraint | None],
                 eos_token_id: int | Sequence[int] | None = None) -> None:
        self.vocab = vocabulary(tokenizer)
        self.rules = [None if c is None else _rules(c, self.vocab) for c in constraints]
        self.states = [_State() for _ in constraints]
        eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        self.eos = {eos} if isinstance(eos, int) else set(eos or ())
        self.done = [False] * len(constraints)
        # The key being written, the strings already closed under each key (entity answers)
        # and the pairs already closed (relation answers), with the pair being written.
        # Scoring maps the k-th copy of a string (same type) to its k-th occurrence, and the
        # k-th copy of a pair to its k-th pair of occurrences, so a copy past those would be
        # unaligned: it is not closed.
        self.key = [b""] * len(constraints)
        self.closed: list[Counter[tuple[bytes, bytes]]] = [Counter() for _ in constraints]
        self.pairs: list[Counter[tuple[bytes, bytes, bytes]]] = [Counter() for _ in constraints]
        self.pair: list[list[bytes]] = [[] for _ in constraints]
        # A string at the sentence's end cannot grow, so a spent copy of it must still close
        # (a dead end). Greedy decoding that wrote one repeats it: after it, the row's list
        # under that key may only close (no comma inside it), until the next key.
        self.wasted = [False] * len(constraints)
        self._closing: dict[int, bytes] | None = None  # token id -> its text before its first quote
        self.seen: int | None = None
        self.seconds = 0.0
        self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        began = time.perf_counter()
        if input_ids.shape[0] != len(self.rules):
            raise ValueError(f"{input_ids.shape[0]} rows but {len(self.rules)} constraints")
        if self.seen is None:
            self.seen = input_ids.shape[1]
        new = input_ids[:, self.seen:].tolist()
        self.seen = input_ids.shape[1]
        mask: np.ndarray | None = None
        for row, rules in enumerate(self.rules):
            if rules is None or self.done[row]:
                continue
            state = self.states[row]
            for token in new[row]:
                if token in self.eos:
                    self.done[row] = True
                    break
                text = self.vocab.texts[token] if token < self.vocab.size else None
                if text:
                    state = self._advance(row, rules, state, text)
            self.states[row] = state
            if self.done[row]:
                continue
            only, ids = rules.allowed(state)
            spent = self._spent(row, rules, state) if only and state.kind == _TEXT else None
            if spent is not None:
                ids = self._without_spent_copies(state, ids, spent)
            elif only and self.wasted[row] and state.kind == _OUTSIDE and len(state.stack) >= 2:
                ids = self._without_commas(ids, closing=False)
            if len(ids) and ids[-1] >= scores.shape[1]:  # ids are sorted; a model with fewer logits
                ids = ids[ids < scores.shape[1]]
            if not only and not len(ids):
                continue
            if mask is None:
                mask = np.ones(scores.shape, dtype=bool)
            if only:
                mask[row] = False
                mask[row, ids] = True
            else:
                mask[row, ids] = False
        if mask is not None:
            scores = _masked(scores, mask)
        self.seconds += time.perf_counter() - began
        self.steps += 1
        return scores


    def _advance(self, row: int, rules: _Rules, state: _State, text: bytes) -> _State:
        """`rules.advance` byte by byte, noting each key, each entity string that closes (an
        entity answer's strings sit in a flat array: stack depth 2) and each relation pair
        (two strings in an array at depth 3)."""
        for byte in text:
            after = rules.advance(state, bytes((byte,)), check=False)
            if state.kind != _OUTSIDE and after.kind == _OUTSIDE and not state.escape:
                spent = self._spent(row, rules, state)
                if spent is not None and spent(state.content.strip()):
                    self.wasted[row] = True
                if state.kind == _KEY:
                    self.key[row], self.wasted[row] = state.content, False
                elif len(state.stack) == 2:
                    self.closed[row][(self.key[row], state.content.strip())] += 1
                elif len(state.stack) == 3:
                    self.pair[row].append(state.content.strip())
                    if len(self.pair[row]) == 2:
                        self.pairs[row][(self.key[row], *self.pair[row])] += 1
            elif len(after.stack) == 3 and len(state.stack) == 2:  # a pair opens
                self.pair[row] = []
            state = after
        return state

    def _spent(self, row: int, rules: _Rules, state: _State):
        """A test of whether closing the string being written with a given content would
        write a copy that scoring has no occurrence left for; None when none can be."""
        key, sentence = self.key[row], rules.sentence
        if len(state.stack) == 2 and self.closed[row]:
            closed = self.closed[row]
            return lambda content: closed[(key, content)] >= _count(sentence, content)
        if len(state.stack) == 3 and len(self.pair[row]) == 1 and self.pairs[row]:
            pairs, first = self.pairs[row], self.pair[row][0]
            return lambda second: pairs[(key, first, second)] >= _count(sentence, first) * _count(sentence, second)
        return None

    def _without_spent_copies(self, state: _State, ids: np.ndarray, spent) -> np.ndarray:
        """`ids` less the tokens that would close the string as a `spent` copy; unchanged
        where that would leave nothing (a dead end)."""
        if self._closing is None:
            self._closing = {i: lead for i, lead, rest in self.vocab.structured_parts if rest[:1] == b'"'}
        refused = [i for i in ids.tolist()
                   if (lead := self._closing.get(i)) is not None and spent((state.content + lead).strip())]
        if not refused:
            return ids
        if len(refused) == len(ids):  # a dead end: close, but end the list rather than go on
            return self._without_commas(ids, closing=True)
        return np.setdiff1d(ids, np.array(refused, dtype=np.int64), assume_unique=True)

    def _without_commas(self, ids: np.ndarray, closing: bool) -> np.ndarray:
        """`ids` less the tokens that write a comma outside a string (`closing`: after the
        quote that closes the string being written; else before the first quote), unless
        none would remain."""
        def comma(i: int) -> bool:
            text = self.vocab.texts[i] or b""
            quote = text.find(b'"')
            if closing:
                return quote >= 0 and b"," in text[quote + 1:]
            return b"," in (text if quote < 0 else text[:quote])

        kept = [i for i in ids.tolist() if not comma(i)]
        return np.array(kept, dtype=np.int64) if kept else ids


def _count(text: bytes, part: bytes) -> int:
    """Occurrences of `part` in `text`, overlapping ones included (as scoring finds them)."""
    count, start = 0, text.find(part)
    while start >= 0 and part:
        count, start = count + 1, text.find(part, start + 1)
    return count


def _masked(scores: torch.Tensor, allowed: np.ndarray) -> torch.Tensor:
    """``scores`` with what is not ``allowed`` at -inf. On a CPU in numpy: torch's
    element-wise ops go multi-threaded there and, with the cores busy with the model,
    took 10-30 ms for one step's 49k scores where numpy takes microseconds."""
    if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64, torch.float16):
        out = scores.detach().numpy().copy()
        np.putmask(out, ~allowed, -np.inf)
        return torch.from_numpy(out)
    return scores.masked_fill(~torch.from_numpy(allowed).to(scores.device), float("-inf"))
