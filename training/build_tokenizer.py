"""Train the default tokenizer offline and write mote_edge/assets/tokenizer.json.

The asset is what checkpoints written by `mote-edge synth` carry (exporters/checkpoint.py); trained
task checkpoints carry their own, smaller tokenizer (training/tokenizer.py). Its corpus is
generated here, deterministically, with no downloads (DESIGN.md section 7):
  - questions and answers about scenes of shapes, wrapped in MoE-LLaVA's chat template (system
    prompt, " USER: ", " ASSISTANT:"); the scene words (12 colours, 12 shapes, sizes, relations)
    are a superset of the task generator's (training/data.py), so the asset suits any scene text,
  - a few hundred generic English sentences built from word lists, so common words merge.

The tokenizer is GPT-2 style byte-level BPE: a ByteLevel pre-tokenizer (every byte string
round-trips), a ByteLevel decoder, no normalizer, no post-processor (no BOS is ever added), and
one special token `<|endoftext|>` with id 0 (EOS and pad). Vocabulary target: 2048 ids.

    python -m mote_edge.training.build_tokenizer           # rebuild the asset
    python -m mote_edge.training.build_tokenizer --check   # exit 1 if the committed asset differs
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import mote_edge
from mote_edge.chat import DEFAULT_SYSTEM

VOCAB_SIZE = 2048
EOS_TOKEN = "<|endoftext|>"
SEED = 20240601
ASSET = Path(mote_edge.__file__).resolve().parent / "assets" / "tokenizer.json"

SYSTEM = DEFAULT_SYSTEM

# ---------------------------------------------------------------------------------------------
# Scene vocabulary (a superset of training/data.py's)
# ---------------------------------------------------------------------------------------------
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "gray", "pink",
          "brown", "cyan"]
SHAPES = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
          "rectangle": "rectangles", "diamond": "diamonds", "hexagon": "hexagons",
          "pentagon": "pentagons", "ellipse": "ellipses", "heart": "hearts", "cross": "crosses",
          "ring": "rings"}
COUNTS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
POSITIONS = ["left", "right", "top", "bottom", "center"]
RELATIONS = ["above", "below", "to the left of", "to the right of", "next to"]
SIZES = ["small", "large", "big", "tiny"]

# ---------------------------------------------------------------------------------------------
# Generic English
# ---------------------------------------------------------------------------------------------
SUBJECTS = ["the teacher", "a small dog", "my friend", "the old man", "a young woman", "the children",
            "our neighbor", "the doctor", "a student", "the farmer", "his sister", "her brother",
            "the team", "the cat", "a bird", "the driver", "the people", "everyone", "nobody",
            "the little girl", "the boy", "my mother", "your father", "the king", "a stranger",
            "the artist", "the writer", "the baker", "the scientist", "the family"]
VERBS = ["looks at", "walks to", "finds", "paints", "reads", "builds", "opens", "closes", "carries",
         "watches", "likes", "wants", "needs", "visits", "remembers", "forgets", "brings", "follows",
         "cleans", "buys", "sells", "draws", "holds", "leaves", "writes about", "talks about",
         "thinks about", "looks for", "waits for", "listens to", "points at", "counts", "moves",
         "shows", "takes", "makes", "gives away", "keeps", "loses", "helps with"]
OBJECTS = ["the house", "a book", "the window", "a letter", "the garden", "the river", "a picture",
           "the door", "a table", "the city", "a small box", "the new car", "an apple", "the road",
           "a long story", "the mountain", "a cup of tea", "the school", "the market", "a map",
           "the water", "the light", "a piece of paper", "the morning news", "a simple question",
           "the answer", "the music", "a game", "the problem", "the computer", "a chair", "the bed",
           "the sky", "the sun", "the moon", "a tree", "the flowers", "the food", "the money",
           "the key"]
PLACES = ["in the park", "at home", "near the station", "by the sea", "in the kitchen", "at school",
          "on the street", "in the morning", "after lunch", "before dinner", "at night",
          "in the evening", "every day", "on the weekend", "in the room", "under the tree",
          "behind the house", "across the road", "in the village", "at the office"]
ADVERBS = ["quickly", "slowly", "carefully", "quietly", "happily", "always", "never", "often",
           "sometimes", "usually", "really", "very", "still", "again", "also", "already", "just",
           "almost", "together", "finally"]
CONNECTORS = ["and then", "but", "because", "so", "while", "when", "after that", "although",
              "before", "since"]
EXTRA_WORDS = (
    "the of and to in is that it was for on are as with his they be at one have this from or had "
    "by not word but what some we can out other were all there when up use your how said an each "
    "she which do their time if will way about many then them write would like so these her long "
    "make thing see him two has look more day could go come did number sound no most people my "
    "over know water than call first who may down side been now find any new work part take get "
    "place made live where after back little only round man year came show every good me give our "
    "under name very through just form sentence great think say help low line differ turn cause "
    "much mean before move right boy old too same tell does set three want air well also play "
    "small end put home read hand port large spell add even land here must big high such follow "
    "act why ask men change went light kind off need house picture try us again animal point "
    "mother world near build self earth father head stand own page should country found answer "
    "school grow study still learn plant cover food sun four between state keep eye never last let "
    "thought city tree cross farm hard start might story saw far sea draw late run don't while "
    "press close night real life few north open seem together next begin got walk example ease "
    "paper group always music those both mark often letter until mile river car feet care second "
    "book carry took science eat room friend began idea fish mountain stop once base hear horse "
    "cut sure watch color face wood main enough plain girl usual young ready above ever list "
    "though feel talk bird soon body dog family direct pose leave song measure door product short "
    "class wind question happen complete ship area half rock order fire south problem piece told "
    "knew pass since top whole king space heard best hour better true during hundred five "
    "remember step early hold west ground interest reach fast verb sing listen six table travel "
    "less morning ten simple several vowel toward war lay against pattern slow center love person "
    "money serve appear road map rain rule govern pull cold notice voice unit power town fine "
    "certain fly fall lead cry dark machine note wait plan figure star box noun field rest "
    "correct able pound done beauty drive stood contain front teach week final gave green quick "
    "develop ocean warm free minute strong special mind behind clear tail produce fact street inch "
    "multiply nothing course stay wheel full force blue object decide surface deep moon island "
    "foot system busy test record boat common gold possible plane stead dry wonder laugh thousand "
    "ago ran check game shape equate hot miss brought heat snow tire bring yes distant fill east "
    "paint language among image images describe describes there's it's isn't aren't can't "
    "I you he we they is am are was were been being have has had having do does did doing"
).split()
# Regular verbs and adjectives, inflected below so "-s", "-ed", "-ing", "-er" merge too.
VERB_STEMS = (
    "walk talk look play work call ask help start open turn move live show try need want jump "
    "paint count point watch listen learn clean cook climb cross fill finish follow happen hope "
    "join kick kill laugh like love mark miss need order pass pick plant pull push rain reach "
    "rest return roll save share smile stay stop study test thank touch travel visit wait wash "
    "wish wonder answer appear believe change close compare decide describe enjoy explain guess "
    "hate imagine improve include invite measure notice offer prefer prepare promise protect "
    "receive remember repeat report seem serve solve suggest support surprise type use dance "
    "allow arrive agree borrow brush check collect color complete contain correct cover create "
    "deliver depend design destroy develop discover dress drop enter expect fail fix form hunt "
    "jog kiss land lift list lock match mix name obey own park pray print produce rescue search "
    "sign ski smell snow sort spell train trust visit vote warn whisper wink worry yell"
).split()
ADJECTIVES = (
    "small large big tall short long wide narrow bright dark light heavy soft hard warm cold "
    "cool hot fast slow quick clean dirty young old new rich poor strong weak happy sad kind "
    "calm loud quiet sharp smooth rough sweet fresh deep high low near far early late easy "
    "simple thick thin round flat full empty busy safe wild brave proud clever great"
).split()
NOUNS = (
    "apple banana orange lemon bread cheese butter water juice coffee milk table chair desk "
    "window door wall floor roof garden forest field river lake ocean island beach mountain "
    "valley desert city town village street road bridge station airport market shop store "
    "office school library museum hospital church park zoo farm kitchen bedroom bathroom "
    "teacher student doctor nurse farmer driver artist writer singer player worker friend "
    "neighbor child parent brother sister uncle aunt cousin baby animal horse cow sheep goat "
    "chicken duck rabbit mouse lion tiger bear wolf fox monkey elephant snake frog fish bird "
    "flower tree leaf grass stone rock sand cloud storm wind rain snow ice fire smoke sky sun "
    "moon planet morning evening night week month year hour minute second computer phone "
    "camera picture photo letter number answer question problem idea story song game sport "
    "ball box bag bottle glass plate spoon knife fork pencil pen paper book page map clock "
    "watch key lamp bed shirt shoe hat coat dress ring"
).split()


def _inflect(stem: str) -> list[str]:
    """walk -> walks walked walking; hope -> hopes hoped hoping; try -> tries tried trying."""
    if stem.endswith("e"):
        return [stem + "s", stem + "d", stem[:-1] + "ing"]
    if stem.endswith("y") and stem[-2] not in "aeiou":
        return [stem[:-1] + "ies", stem[:-1] + "ied", stem + "ing"]
    if stem.endswith(("s", "sh", "ch", "x")):
        return [stem + "es", stem + "ed", stem + "ing"]
    return [stem + "s", stem + "ed", stem + "ing"]


def _plural(noun: str) -> str:
    if noun.endswith(("s", "sh", "ch", "x")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def word_list() -> list[str]:
    """Every generic English word form the corpus should contain, in a fixed order."""
    words = list(EXTRA_WORDS) + VERB_STEMS + ADJECTIVES + NOUNS
    for stem in VERB_STEMS:
        words += _inflect(stem)
    for adj in ADJECTIVES:
        base = adj[:-1] if adj.endswith("e") else adj
        words += [base + "er", base + "est", adj + "ly"]
    words += [_plural(n) for n in NOUNS]
    words += [w.capitalize() for w in words[:300]]
    return list(dict.fromkeys(words))


def task_lines(rng: random.Random, n: int) -> Iterator[str]:
    """`n` chat-formatted question/answer pairs about scenes of coloured shapes."""
    shapes = list(SHAPES)
    for _ in range(n):
        color, color2 = rng.sample(COLORS, 2)
        shape, shape2 = rng.sample(shapes, 2)
        plural = SHAPES[shape]
        k = rng.randrange(len(COUNTS))
        count_word = COUNTS[k]
        pos = rng.choice(POSITIONS)
        rel = rng.choice(RELATIONS)
        size = rng.choice(SIZES)
        kind = rng.randrange(10)
        if kind == 0:
            q, a = f"What color is the {shape}?", rng.choice([color, f"The {shape} is {color}."])
        elif kind == 1:
            q, a = f"How many {plural} are there?", rng.choice([count_word, str(k), f"There are {k} {plural}."])
        elif kind == 2:
            q = f"Where is the {color} {shape}?"
            a = rng.choice([pos, f"It is on the {pos}.", f"The {color} {shape} is {rel} the {color2} {shape2}."])
        elif kind == 3:
            q, a = f"Is there a {color} {shape}?", rng.choice(["yes", "no", "Yes.", "No."])
        elif kind == 4:
            q, a = f"What shape is on the {pos}?", rng.choice([shape, f"A {color} {shape}."])
        elif kind == 5:
            q, a = f"How many {color} shapes are there?", rng.choice([count_word, str(k)])
        elif kind == 6:
            q = f"Is the {color} {shape} {rel} the {color2} {shape2}?"
            a = rng.choice(["yes", "no"])
        elif kind == 7:
            q = "Describe the image."
            a = (f"There are {count_word} shapes: a {size} {color} {shape} at the {pos} and a "
                 f"{color2} {shape2} {rel} it.")
        elif kind == 8:
            q, a = f"What is the color of the {size} {shape}?", color
        else:
            q, a = f"Are there more {plural} than {SHAPES[shape2]}?", rng.choice(["yes", "no"])
        image = "<image>\n" if rng.random() < 0.8 else ""
        yield f"{SYSTEM} USER: {image}{q} ASSISTANT: {a}"
        yield f"{q} {a}"


def english_lines(rng: random.Random, n: int) -> Iterator[str]:
    """`n` generic English sentences assembled from the word lists above."""
    for _ in range(n):
        s1 = f"{rng.choice(SUBJECTS)} {rng.choice(ADVERBS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        if rng.random() < 0.5:
            s1 += f" {rng.choice(PLACES)}"
        if rng.random() < 0.4:
            s1 += f", {rng.choice(CONNECTORS)} {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        end = rng.choice([".", ".", ".", "!", "?"])
        yield s1[0].upper() + s1[1:] + end


def corpus(seed: int = SEED) -> list[str]:
    """The whole training corpus, one sentence per line, identical on every run."""
    rng = random.Random(seed)
    lines = [SYSTEM, f"{SYSTEM} USER: ", " ASSISTANT:"]
    lines += list(task_lines(rng, 3000))
    lines += list(english_lines(rng, 600))
    words = word_list()
    for _ in range(20):  # each common word in many contexts, so it merges whole
        rng.shuffle(words)
        lines.append(" ".join(words))
    lines += [" ".join(str(i) for i in range(0, 101)), " ".join(COUNTS), " ".join(COLORS),
              " ".join(f"{s} {p}" for s, p in SHAPES.items())]
    return lines


def build(vocab_size: int = VOCAB_SIZE, seed: int = SEED) -> Tokenizer:
    """Train the byte-level BPE; `<|endoftext|>` is id 0, the 256 byte symbols follow."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    n = tok.get_vocab_size(with_added_tokens=True)
    assert n <= vocab_size, f"trained vocabulary has {n} ids, more than {vocab_size}"
    assert tok.token_to_id(EOS_TOKEN) == 0, "<|endoftext|> must be id 0"
    for text in (SYSTEM, "héllo 猫 🐱\n\t\x00\xff"):
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text, "round trip failed"
    return tok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ASSET, help="where to write tokenizer.json")
    ap.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = ap.parse_args(argv)

    text = build(args.vocab_size).to_str(pretty=False) + "\n"
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from a fresh build'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    tok = Tokenizer.from_str(text)
    print(f"wrote {args.out}: {tok.get_vocab_size(with_added_tokens=True)} ids, {len(text.encode())} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
