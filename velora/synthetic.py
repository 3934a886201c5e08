"""A seeded synthetic visual-entailment dataset whose labels follow from the picture: the demo's data.

A scene is one to four coloured shapes in the cells of a 2x2 grid, drawn with Pillow. The premise truthfully
describes part of it: one object, sometimes with its place, sometimes with a property no picture can show (what it
is made of, how heavy it is). Each hypothesis is a claim checked against the scene and the premise:

    entailment     true of the picture (existence, place, count) or stated by the premise
    contradiction  false of the picture, or against what the premise states
    neutral        neither: an unseen property the premise does not state, or something outside the picture

The same property words ("made of wood") appear under all three labels, so a model has to read the premise and
find the object it talks about, not spot a keyword.

Two tasks share the scenes but ask different things:

    A  existence, place and material: what the demo's small base model is pretrained on
    B  counting and weight, plus some existence: the shifted task the LoRA stage learns ("your data")
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from velora.convert.spreadsheet import write_rows

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 90, 200), "yellow": (235, 190, 20)}
BACKGROUNDS = {"white": (250, 250, 250), "grey": (218, 218, 218), "cream": (246, 236, 210)}
ROWS, COLUMNS = ("top", "bottom"), ("left", "right")  # the 2x2 grid: cell (row, column)
NUMBERS = ("no", "one", "two", "three", "four")

# Properties a picture cannot show: only a premise can state them. Adjective in the premise -> phrase in hypotheses.
UNSEEN = {
    "material": {"wooden": "made of wood", "metal": "made of metal", "plastic": "made of plastic",
                 "glass": "made of glass"},
    "weight": {"heavy": "heavy", "lightweight": "lightweight"},
}
# Things no picture of shapes on a plain background can settle, with or without a premise.
OUTSIDE = ("a dog is standing just outside the picture", "the picture was drawn by a child",
           "someone is holding the paper", "the picture was made in the morning",
           "the shapes were cut out of paper", "there is a table under the paper")

TASKS = {
    # kind -> share of the hypotheses drawn for one image (before balancing the three labels)
    "A": {"exists": 4, "place": 2, "unseen": 4, "outside": 1},
    "B": {"count": 4, "unseen": 4, "exists": 1, "outside": 1},
}
UNSEEN_OF_TASK = {"A": "material", "B": "weight"}


# ----------------------------------------------------------------------------------------------------------------
# Scenes


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    row: int  # 0 top, 1 bottom
    column: int  # 0 left, 1 right
    size: float  # radius as a share of the cell side
    dx: float  # offset from the cell centre, share of the cell side
    dy: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    background: str

    def count(self, shape: str | None = None, colour: str | None = None) -> int:
        return sum((shape is None or t.shape == shape) and (colour is None or t.colour == colour)
                   for t in self.things)

    def unique(self) -> list[Thing]:
        """Things that "the red circle" names unambiguously (no other thing of that colour and shape)."""
        return [t for t in self.things if self.count(t.shape, t.colour) == 1]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        return cls(tuple(Thing(**t) for t in data["things"]), data["background"])


def make_scene(rng: random.Random) -> Scene:
    """One to four things in distinct cells; colours and shapes repeat sometimes (counting needs it); at least one
    thing is unique, so a premise can name it."""
    while True:
        n = rng.choice((1, 2, 2, 3, 3, 3, 4, 4))
        cells = rng.sample([(r, c) for r in range(2) for c in range(2)], n)
        things = []
        for row, column in cells:
            if things and rng.random() < 0.3:  # repeat a shape or a colour
                other = rng.choice(things)
                shape = other.shape if rng.random() < 0.5 else rng.choice(SHAPES)
                colour = other.colour if shape != other.shape else rng.choice(list(COLOURS))
            else:
                shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
            things.append(Thing(shape, colour, row, column, size=rng.uniform(0.26, 0.36),
                                dx=rng.uniform(-0.08, 0.08), dy=rng.uniform(-0.08, 0.08)))
        scene = Scene(tuple(sorted(things, key=lambda t: (t.row, t.column))), rng.choice(list(BACKGROUNDS)))
        if scene.unique():
            return scene


def render(scene: Scene, size: int = 128) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    cell = size / 2
    for t in scene.things:
        cx, cy = (t.column + 0.5 + t.dx) * cell, (t.row + 0.5 + t.dy) * cell
        r = t.size * cell
        fill = COLOURS[t.colour]
        if t.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif t.shape == "square":
            s = r * 0.9
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fill)
    return image


# ----------------------------------------------------------------------------------------------------------------
# Premises: a true description of one (unique) thing, maybe with its place and an unseen property


@dataclass(frozen=True)
class Premise:
    text: str
    thing: Thing
    unseen: str | None  # the adjective stated ("wooden"), or None


def place_phrase(t: Thing, how: str) -> str:
    return {"row": f"at the {ROWS[t.row]}", "column": f"on the {COLUMNS[t.column]}",
            "cell": f"at the {ROWS[t.row]} {COLUMNS[t.column]}"}[how]


def make_premise(scene: Scene, task: str, rng: random.Random) -> Premise:
    thing = rng.choice(scene.unique())
    unseen = rng.choice(list(UNSEEN[UNSEEN_OF_TASK[task]])) if rng.random() < 0.7 else None
    words = ["a", *([unseen] if unseen else []), thing.colour, thing.shape]
    if rng.random() < 0.6:
        words.append(place_phrase(thing, rng.choice(("row", "column", "cell"))))
    if unseen is None and len(words) < 5:
        words.append(f"on a {scene.background} background")
    text = " ".join(words)
    return Premise(text[0].upper() + text[1:], thing, unseen)


# ----------------------------------------------------------------------------------------------------------------
# Hypotheses: claims with a truth value given scene and premise (True, False, or None = undecidable)


@dataclass(frozen=True)
class Hypothesis:
    text: str
    label: str
    kind: str


def _label(truth: bool | None) -> str:
    return {True: "entailment", False: "contradiction", None: "neutral"}[truth]


def _number(n: int, noun: str) -> str:
    return f"there is one {noun}" if n == 1 else f"there are {NUMBERS[n]} {noun}s"


def exists_claims(scene: Scene, rng: random.Random) -> list[tuple[str, bool]]:
    """"there is a red circle" / "there is a circle" / "there is a red shape", or "there is no ...": true half of
    the time for every wording, so the words alone never give the answer away."""
    form = rng.choice(("both", "both", "shape", "colour"))
    def key(shape, colour):
        return (shape if form != "colour" else None, colour if form != "shape" else None)
    present = {key(t.shape, t.colour) for t in scene.things}
    absent = [k for k in {key(s, c) for s in SHAPES for c in COLOURS} if k not in present]
    negated = rng.random() < 0.3
    want_true = rng.random() < 0.5
    pool = sorted(present) if want_true != negated else sorted(absent)
    if not pool:
        return []
    shape, colour = rng.choice(pool)
    noun = " ".join(w for w in (colour, shape or "shape") if w)
    if negated:
        return [(f"there is no {noun}", (shape, colour) not in present)]
    article = "an" if noun[0] in "aeiou" else "a"
    return [(f"there is {article} {noun}", (shape, colour) in present)]


def place_claims(scene: Scene, rng: random.Random) -> list[tuple[str, bool]]:
    t = rng.choice(scene.unique())
    if rng.random() < 0.5:
        side = rng.randrange(2)
        return [(f"the {t.name} is on the {COLUMNS[side]}", t.column == side)]
    side = rng.randrange(2)
    return [(f"the {t.name} is at the {ROWS[side]}", t.row == side)]


def count_claims(scene: Scene, rng: random.Random) -> list[tuple[str, bool]]:
    what = rng.choice(("shape", "shape", "colour", "all"))
    if what == "shape":
        shape = rng.choice([t.shape for t in scene.things] + list(SHAPES))
        actual, noun = scene.count(shape=shape), shape
    elif what == "colour":
        colour = rng.choice([t.colour for t in scene.things] + list(COLOURS))
        actual, noun = scene.count(colour=colour), f"{colour} shape"
    else:
        actual, noun = len(scene.things), "shape"
    said = actual if rng.random() < 0.5 else rng.choice([n for n in range(5) if n != actual])
    return [(_number(said, noun), said == actual)]


def unseen_claims(scene: Scene, premise: Premise, task: str, rng: random.Random) -> list[tuple[str, bool | None]]:
    """A property only a premise can state: entailed or contradicted when the premise states it of that thing,
    neutral for any other thing or when the premise says nothing about it."""
    values = UNSEEN[UNSEEN_OF_TASK[task]]
    about_premise = rng.random() < 0.7
    t = premise.thing if about_premise else rng.choice(scene.unique())
    adjective = premise.unseen if premise.unseen and rng.random() < 0.5 else rng.choice(list(values))
    truth = None if t != premise.thing or premise.unseen is None else adjective == premise.unseen
    return [(f"the {t.name} is {values[adjective]}", truth)]


def outside_claims(scene: Scene, rng: random.Random) -> list[tuple[str, None]]:
    return [(rng.choice(OUTSIDE), None)]


def make_hypotheses(scene: Scene, premise: Premise, task: str, rng: random.Random, per_label: int = 2
                    ) -> list[Hypothesis]:
    """Up to `per_label` hypotheses of each label for one picture, drawn from the task's kinds, no repeats."""
    kinds, weights = zip(*TASKS[task].items())
    chosen: dict[str, list[Hypothesis]] = {"entailment": [], "contradiction": [], "neutral": []}
    seen = {premise.text.lower()}
    for _ in range(60):
        if all(len(v) >= per_label for v in chosen.values()):
            break
        kind = rng.choices(kinds, weights)[0]
        claims = {"exists": lambda: exists_claims(scene, rng), "place": lambda: place_claims(scene, rng),
                  "count": lambda: count_claims(scene, rng),
                  "unseen": lambda: unseen_claims(scene, premise, task, rng),
                  "outside": lambda: outside_claims(scene, rng)}[kind]()
        for text, truth in claims:
            label = _label(truth)
            if text.lower() in seen or len(chosen[label]) >= per_label:
                continue
            seen.add(text.lower())
            chosen[label].append(Hypothesis(text[0].upper() + text[1:], label, kind))
    return [h for label in chosen for h in chosen[label]]


# ----------------------------------------------------------------------------------------------------------------
# Files: images + a CSV in the guide's format (image_path,premise,hypothesis,label), extra column `kind`


def write_task(folder: str | Path, task: str, n_images: int, seed: int, image_px: int = 128,
               per_label: int = 2, name: str = "data") -> Path:
    """Draw `n_images` scenes of `task` into FOLDER/images, write FOLDER/NAME.csv (paths relative to it) and
    FOLDER/NAME.scenes.jsonl (each picture's scene and premise, for checking). Returns the CSV path."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{task}-{seed}")
    rows = []
    with open(folder / f"{name}.scenes.jsonl", "w", encoding="utf-8") as scenes:
        for i in range(n_images):
            scene = make_scene(rng)
            premise = make_premise(scene, task, rng)
            image = f"images/{name}_{task}{seed}_{i:05d}.png"
            render(scene, image_px).save(folder / image)
            scenes.write(json.dumps({"image_path": image, "scene": scene.to_dict(), "premise": premise.text,
                                     "premise_thing": asdict(premise.thing), "premise_unseen": premise.unseen})
                         + "\n")
            rows += [{"image_path": image, "premise": premise.text, "hypothesis": h.text, "label": h.label,
                      "kind": h.kind} for h in make_hypotheses(scene, premise, task, rng, per_label)]
    csv_path = write_rows(folder / f"{name}.csv", ["image_path", "premise", "hypothesis", "label", "kind"], rows)
    return csv_path
