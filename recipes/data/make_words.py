#!/usr/bin/env python3
"""Writes words.jsonl: the quickstart's task, naming the vowels that occur in a word.

The words are the 3-9 letter words of general.txt (run make_general.py first) and some invented
ones, shuffled with a fixed seed. One instruction record a line:
{"instruction": "vowels", "input": "garden", "output": "a e"} (the vowels a e i o u
that occur, in alphabetical order, each once; "none" if there is none). The quickstart keeps the
last lines for a held-out accuracy test, so the answer for a word there has never been shown.

    python3 recipes/data/make_words.py      # writes recipes/data/words.jsonl
"""
import argparse
import json
import os
import random
import re

INSTRUCTION = "vowels"
SHOWCASE = "umbrella"  # the last line, so the quickstart shows its answer (held out)


def vowels(word):
    return " ".join(v for v in "aeiou" if v in word) or "none"


def invented(rng, n, avoid):
    onsets = "b c d f g h j k l m n p qu r s t v w x y z br cl dr fl gr pl sk st tr".split()
    vowels = "a e i o u".split()
    codas = ["", "", "", "n", "r", "x", "z", "k", "l", "s", "m"]
    out = set()
    while len(out) < n:
        w = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.randint(1, 3)))
        w += rng.choice(codas)
        if 3 <= len(w) <= 9 and w not in avoid:
            out.add(w)
    return sorted(out)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--general", default=os.path.join(here, "general.txt"))
    ap.add_argument("--invented", type=int, default=120, help="how many made-up words to add")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(here, "words.jsonl"))
    a = ap.parse_args()
    rng = random.Random(a.seed)
    with open(a.general, encoding="utf-8") as f:
        real = sorted(set(re.findall(r"\b[a-z]{3,9}\b", f.read())))
    words = real + invented(rng, a.invented, set(real))
    rng.shuffle(words)
    if SHOWCASE in words:
        words.remove(SHOWCASE)
        words.append(SHOWCASE)
    with open(a.out, "w", encoding="utf-8") as f:
        for w in words:
            f.write(json.dumps({"instruction": INSTRUCTION, "input": w, "output": vowels(w)}) + "\n")
    print(f"wrote {a.out}: {len(words)} words ({len(real)} from {os.path.basename(a.general)})")


if __name__ == "__main__":
    main()
