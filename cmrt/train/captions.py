"""Captioned coloured digits (``--data digits-text``): the text-to-image training set, its word-level
CLIP tokenizer, and reading a render's digit and colours back for evaluation.

Each of scikit-learn's digits is painted with a foreground and a background colour from a small
named palette (``PALETTE``, ordered pairs of distinct colours) and given a caption built from one
of a few phrasings, with the digit as a numeral or a number word ("a red 7 on a blue background",
"seven in red on blue"). The last 10% of the digits (``data.HELD_OUT_FRACTION``) are held out:
their renders and captions are ``split="test"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import DIGITS_CLASSES, HELD_OUT_FRACTION, Dataset, digits_8x8, paint

#: The palette: name → RGB in [0, 1].
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.85, 0.1), "white": (0.97, 0.97, 0.97), "black": (0.05, 0.05, 0.05),
}
COLORS = tuple(PALETTE)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Caption phrasings; {d} is the digit (numeral or word), {fg}/{bg} the colour names.
PHRASINGS = (
    "a {fg} {d} on a {bg} background",
    "{d} in {fg} on {bg}",
    "the number {d} , {fg} on {bg}",
    "a {bg} background with a {fg} {d}",
    "{fg} digit {d} , {bg} background",
)
TEXT_SIZE = 64  # pixels
TEXT_COPIES = 4  # colourings (and captions) of each training digit
CONTEXT = 16  # the tokenizer's and text encoder's context: the longest caption has 10 words + 2 specials
SPECIALS = ("<|startoftext|>", "<|endoftext|>")
PUNCTUATION = ",.!?"


@dataclass(frozen=True)
class CaptionSet:
    """Renders (N, 3, S, S) in [-1, 1], their captions and the digit / colour indices they show."""

    name: str
    x: torch.Tensor
    captions: tuple[str, ...]
    digits: np.ndarray
    fg: np.ndarray  # index into COLORS
    bg: np.ndarray

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def channels(self) -> int:
        return int(self.x.shape[1])


def caption(digit: int, fg: int, bg: int, phrasing: int, word: bool) -> str:
    """The caption of ``digit`` painted ``COLORS[fg]`` on ``COLORS[bg]`` in phrasing ``phrasing``."""
    d = NUMBER_WORDS[digit] if word else str(digit)
    return PHRASINGS[phrasing].format(d=d, fg=COLORS[fg], bg=COLORS[bg])


def draw_colors(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` ordered pairs of distinct palette colours (foreground, background), uniformly."""
    fg = rng.integers(0, len(COLORS), n)
    bg = (fg + rng.integers(1, len(COLORS), n)) % len(COLORS)
    return fg, bg


def palette_rgb(idx: np.ndarray) -> np.ndarray:
    return np.asarray([PALETTE[COLORS[i]] for i in idx], dtype=np.float32).reshape(len(idx), 3)


def render(images01: np.ndarray, fg: np.ndarray, bg: np.ndarray, size: int = TEXT_SIZE) -> torch.Tensor:
    """(N, 8, 8) digits in [0, 1] painted with palette colours ``fg``/``bg`` → (N, 3, size, size) in [-1, 1]."""
    return paint(images01, palette_rgb(fg), palette_rgb(bg), size)


def load_captioned(split: str = "train", copies: int = TEXT_COPIES, seed: int = 0,
                   size: int = TEXT_SIZE) -> CaptionSet:
    """``digits-text``: the first 90% of the digits ("train", ``copies`` colourings each) or the rest
    ("test"), each with random palette colours, phrasing and numeral/word; seeded."""
    images, labels = digits_8x8()
    cut = int(len(images) * (1 - HELD_OUT_FRACTION))
    sl = slice(0, cut) if split == "train" else slice(cut, None)
    images, labels = np.tile(images[sl], (copies, 1, 1)), np.tile(labels[sl], copies)
    rng = np.random.default_rng(seed + (split != "train"))
    fg, bg = draw_colors(len(labels), rng)
    phrasing, word = rng.integers(0, len(PHRASINGS), len(labels)), rng.integers(0, 2, len(labels))
    caps = tuple(caption(int(d), int(f), int(b), int(p), bool(w)) for d, f, b, p, w in zip(labels, fg, bg, phrasing, word))
    return CaptionSet(f"digits-text-{split}", render(images, fg, bg, size), caps, labels, fg, bg)


def as_dataset(split: str = "train", size: int = TEXT_SIZE) -> Dataset:
    """The renders of ``split`` as a ``data.Dataset`` labelled by digit (for cmrt's own methods,
    e.g. a consistency decoder on ``--data digits-text``)."""
    c = load_captioned(split, size=size)
    return Dataset(c.name, "image", c.x, torch.from_numpy(c.digits), DIGITS_CLASSES)


def as_crops(split: str, crop: int):
    """The renders of ``split`` as a ``photos.CropSet`` of ``crop``-pixel crops on the latent grid
    (a decoder trained on 64-pixel renders at a quarter of the cost, as on photos)."""
    from .photos import CropSet

    c = load_captioned(split)
    return CropSet(c.name, tuple(c.x), crop)


# --- the tokenizer ------------------------------------------------------------------------------
def vocabulary() -> list[str]:
    """Every word the captions use (and the numerals and punctuation)."""
    words = {w for p in PHRASINGS for w in p.replace("{d}", "").replace("{fg}", "").replace("{bg}", "").split()}
    return sorted(words | set(COLORS) | set(NUMBER_WORDS) | set("0123456789") | set(PUNCTUATION))


def _chain(parts: list[str], vocab: dict[str, int], merges: list[str]) -> None:
    """Merges joining ``parts`` left to right into one token (appended: the lowest ranks)."""
    head = parts[0]
    for nxt in parts[1:]:
        pair = f"{head} {nxt}"
        if pair not in merges:
            merges.append(pair)
        head += nxt
        vocab.setdefault(head, len(vocab))


def _save_tables(folder: Path, vocab: dict[str, int], merges: list[str]):
    from transformers import CLIPTokenizer

    full = vocab | {s: len(vocab) + i for i, s in enumerate(SPECIALS)}
    (folder / "vocab.json").write_text(json.dumps(full))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=CONTEXT,
                         pad_token=SPECIALS[1])


MERGE_ROUNDS = 4  # rounds of repair merges for words an earlier word's merges cut differently


def write_tokenizer(folder: Path) -> Path:
    """The captions' word-level ``CLIPTokenizer`` (context ``CONTEXT``) saved in ``folder``.

    A CLIP BPE vocabulary of single characters (with and without the end-of-word mark) plus a
    left-to-right merge chain per caption word; a word that earlier merges cut into other pieces
    gets a chain over those pieces, until every caption word is one token. A prompt word outside
    the vocabulary falls back to characters."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = vocabulary()
    vocab: dict[str, int] = {}
    for c in sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789") | set(PUNCTUATION)):
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[str] = []
    for w in words:
        _chain(list(w[:-1]) + [w[-1] + "</w>"], vocab, merges)
    for _ in range(MERGE_ROUNDS):
        tok = _save_tables(folder, vocab, merges)
        split = {w: tok.tokenize(w) for w in words if len(tok.tokenize(w)) != 1}
        if not split:
            tok.save_pretrained(str(folder))
            return folder
        for pieces in split.values():
            _chain(pieces, vocab, merges)
    raise RuntimeError(f"the caption tokenizer still splits {sorted(split)}")


# --- reading renders back -------------------------------------------------------------------------
FG_MASK = 0.6  # pixels at least this far from the background (along bg → fg) count as the digit


def nearest_color(rgb: torch.Tensor) -> np.ndarray:
    """(N, 3) colours in [0, 1] → the index of the nearest palette colour."""
    pal = torch.tensor([PALETTE[c] for c in COLORS], dtype=rgb.dtype)
    return torch.cdist(rgb, pal).argmin(1).numpy()


def read_colors(images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, H, W) renders in [-1, 1] → (foreground, background) palette indices: the background is
    the median of the border pixels, the foreground the median of the pixels farthest from it
    (those past ``FG_MASK`` of the way to the farthest pixel)."""
    x = (torch.as_tensor(np.asarray(images), dtype=torch.float32).clamp(-1, 1) + 1) / 2
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)
    bg = border.median(dim=-1).values
    dist = ((x - bg[..., None, None]) ** 2).sum(1).sqrt().flatten(1)  # (N, HW)
    far = dist >= FG_MASK * dist.max(1, keepdim=True).values
    flat = x.flatten(2)
    fg = torch.stack([flat[i][:, far[i]].median(1).values for i in range(len(x))])
    return nearest_color(fg), nearest_color(bg)
