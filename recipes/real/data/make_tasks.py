"""Writes the task data of recipes/real/ (deterministic; rerun to regenerate):

  moods.jsonl   instruction rows: label a sentence's mood with made-up words, "sunny" (pleasant)
                or "stormy" (unpleasant) -- a task SmolLM2 does not already solve (it has never seen
                the labels), learnable in a few dozen steps because it knows what is pleasant
  topics.jsonl  instruction rows: the topic of a sentence, "kitchen" or "stadium" (food or sport),
                the second task of the multi-task comparison
  reviews.jsonl classification rows for all-MiniLM-L6-v2: {"text", "label"}, 0 negative, 1 positive
  facts.json    the knowledge probe: prompts whose greedy completion starts with the answer
  general.txt   general English for the retention loss: a copy of recipes/data/general.txt (a
                recipe reads only its own directory)

    python3 recipes/real/data/make_tasks.py
"""
import json
import random
import shutil
from pathlib import Path

HERE = Path(__file__).parent
rng = random.Random(7)

subjects = ["My neighbour", "The teacher", "Our guest", "The old man", "My sister", "The driver",
            "A child", "The manager", "Her friend", "The doctor", "My cousin", "The pilot"]
good = ["smiled at the sunrise", "found the lost puppy", "won a small prize", "laughed with old friends",
        "enjoyed a warm meal", "received a kind letter", "danced at the wedding", "finished the book happily",
        "got a surprise gift", "planted flowers in spring", "heard wonderful news", "celebrated a birthday"]
bad = ["lost the house keys", "missed the last train", "broke a favourite cup", "caught a nasty cold",
       "argued with the landlord", "spilled coffee on the report", "failed the driving test",
       "waited hours in the rain", "got a parking fine", "dropped the phone in a puddle",
       "heard terrible news", "burned the dinner"]
food = ["chopped onions for the soup", "baked fresh bread", "tasted the spicy curry", "peeled a ripe mango",
        "stirred the risotto slowly", "grilled fish for lunch", "boiled pasta for dinner", "sliced a lemon tart"]
sport = ["scored a late goal", "ran the marathon", "served an ace at tennis", "swam ten laps",
         "hit a home run", "won the cycling race", "blocked a penalty kick", "lifted heavy weights"]


def rows_of(pairs, instruction, n):
    out = []
    for _ in range(n):
        label, verbs = rng.choice(pairs)
        out.append({"instruction": instruction, "input": f"{rng.choice(subjects)} {rng.choice(verbs)}.",
                    "output": label})
    return out


def write(name, rows):
    with open(HERE / name, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


write("moods.jsonl", rows_of([("sunny", good), ("stormy", bad)],
                             "Label the mood of the sentence with one word, sunny or stormy.", 240))
write("topics.jsonl", rows_of([("kitchen", food), ("stadium", sport)],
                              "Label the topic of the sentence with one word, kitchen or stadium.", 240))

reviews = []
for _ in range(400):
    label = rng.random() < 0.5
    reviews.append({"text": f"{rng.choice(subjects)} {rng.choice(good if label else bad)}.", "label": int(label)})
write("reviews.jsonl", reviews)

facts = [
    ("The capital of France is", "Paris"), ("The capital of Japan is", "Tokyo"),
    ("The capital of Italy is", "Rome"), ("The capital of Germany is", "Berlin"),
    ("The capital of Spain is", "Madrid"), ("The capital of England is", "London"),
    ("The largest planet in the solar system is", "Jupiter"), ("Water is made of hydrogen and", "oxygen"),
    ("The chemical symbol for gold is", "Au"), ("The first man on the moon was Neil", "Armstrong"),
    ("The author of Romeo and Juliet is William", "Shakespeare"), ("The fastest land animal is the", "cheetah"),
    ("The largest ocean on Earth is the", "Pacific"), ("Two plus two equals", "four"),
    ("The opposite of hot is", "cold"), ("A baby cat is called a", "kitten"),
    ("The Eiffel Tower is in", "Paris"), ("The currency of Japan is the", "yen"),
    ("The tallest mountain in the world is Mount", "Everest"), ("The color of the sky on a clear day is", "blue"),
]
with open(HERE / "facts.json", "w") as f:
    json.dump([{"prompt": p, "answer": a} for p, a in facts], f, indent=1)
    f.write("\n")

shutil.copyfile(HERE.parent.parent / "data" / "general.txt", HERE / "general.txt")
