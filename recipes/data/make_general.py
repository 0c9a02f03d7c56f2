#!/usr/bin/env python3
"""Writes general.txt: varied, original everyday English for the quickstart's pre-training.

A small grammar expands sentence templates about the weather, towns, kitchens, journeys,
workshops, schools, animals, the sea, gardens, markets, music and simple science, and groups
them into paragraphs on one topic each, with a short story about a named person now and then.
Deterministic (fixed seed); standard library only.

    python3 recipes/data/make_general.py            # writes recipes/data/general.txt
    python3 recipes/data/make_general.py --size 60000 --seed 7 --out other.txt
"""
import argparse
import os
import random
import re

# Slots: `{name}` picks one entry of the list `name` (entries may contain slots themselves),
# `[a|b|c]` picks one alternative inline. Any `a`/`an` is fixed up afterwards.
S = {
    "name": "Mara Tomas Lena Omar Hugo Ines Ravi Nadia Felix Ada Jonas Priya Samuel Yara Leo "
    "Clara Emil Sofia Idris Greta Mateo Hana Oskar Rosa Theo Alma Bruno Keiko Dara Milo "
    "Elena Anton Iris Pablo Vera Nils Zora Caleb Maya Ivo".split(),
    "relative": "grandmother grandfather aunt uncle sister brother cousin neighbour friend "
    "mother father".split(),
    "job": "baker carpenter teacher fisherman nurse farmer potter tailor gardener blacksmith "
    "librarian doctor painter builder shepherd miller weaver cook sailor engineer".split(),
    "animal": "fox hare deer owl heron badger otter crow sparrow squirrel goat sheep cow horse "
    "dog cat duck goose swallow robin hedgehog mouse beaver".split(),
    "animals": "foxes hares deer owls herons badgers otters crows sparrows squirrels goats sheep "
    "cows horses dogs cats ducks geese swallows robins hedgehogs mice beavers".split(),
    "tree": "oak beech maple birch willow pine ash elm cherry apple chestnut poplar".split(),
    "flower": "daisies poppies tulips roses violets bluebells sunflowers lilies clover heather "
    "lavender marigolds".split(),
    "season": "spring summer autumn winter".split(),
    "month": "January February March April May June July August September October November "
    "December".split(),
    "day": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split(),
    "time": ["in the morning", "at dawn", "before noon", "in the afternoon", "at dusk",
             "in the evening", "late at night", "after supper", "on Sunday", "every weekend",
             "once a week", "early in the day", "when the sun came up", "after the rain"],
    "weather": ["it rained all day", "the wind blew from the west", "a thick fog covered the valley",
                "the sky was clear and blue", "snow fell quietly on the roofs",
                "a storm rolled in from the sea", "the air was warm and still",
                "frost covered the grass", "a light drizzle kept the streets wet",
                "the clouds hung low over the hills", "the sun shone through thin clouds"],
    "place": ["the village", "the old town", "the harbour", "the valley", "the market square",
              "the station", "the library", "the bakery", "the school", "the farm",
              "the riverbank", "the forest", "the hill above the town", "the bridge",
              "the park", "the workshop", "the kitchen", "the garden", "the beach",
              "the mountain path", "the museum", "the post office", "the orchard", "the mill"],
    "town": "Ashford Brindle Calder Dunmore Elmstead Farrow Glenholm Harwick Ivybridge Kestrel "
    "Larchmont Marbury Northwick Oakhurst Pellow Redbrook Stanmere Thornby Westvale".split(),
    "adj_place": "quiet busy narrow wide old small crowded peaceful sunny windy cold bright "
    "muddy green rocky sleepy lively".split(),
    "food": ["bread", "soup", "cheese", "apples", "pears", "honey", "rice", "beans", "potatoes",
             "carrots", "onions", "eggs", "fish", "butter", "jam", "plums", "tomatoes", "lentils",
             "porridge", "pancakes", "noodles", "cherries", "lettuce", "tea",
             "coffee", "milk", "lemonade", "walnuts"],
    "dish": ["a pot of vegetable soup", "a loaf of brown bread", "an apple pie", "a bean stew",
             "a plate of pancakes", "a bowl of porridge", "a tomato salad", "a fish pie",
             "a pan of fried potatoes", "a jar of plum jam", "a lemon cake", "a pot of rice",
             "a tray of oat biscuits", "a bowl of lentil soup", "an onion tart"],
    "verb_cook": "chopped stirred boiled baked roasted washed peeled sliced tasted mixed".split(),
    "tool": ["a hammer", "a saw", "a chisel", "a spade", "a rake", "a needle", "a ladder",
             "a bucket", "a brush", "a knife", "a rope", "a lantern", "a wheelbarrow",
             "a pair of scissors", "a measuring tape", "a basket", "a map", "a compass"],
    "thing": ["a letter", "a key", "a book", "a blue umbrella", "a wooden box", "an old coin",
              "a photograph", "a red scarf", "a small bell", "a notebook", "a glass jar",
              "a pair of boots", "a kite", "a clock", "a bicycle", "a wool hat", "a ring",
              "a painted cup", "a torn map", "a bag of seeds"],
    "feeling": "happy tired worried curious proud calm surprised nervous cheerful patient "
    "hungry sleepy".split(),
    "vehicle": ["the train", "the bus", "the ferry", "a small boat", "a bicycle", "the tram",
                "an old car", "a horse and cart", "the night train"],
    "subject": ["history", "music", "mathematics", "geography", "drawing", "reading",
                "science", "cooking", "writing", "astronomy", "languages", "woodwork"],
    "instrument": "piano violin guitar flute drum cello trumpet harp accordion clarinet".split(),
    "sport": "football swimming running cycling tennis rowing climbing skating chess".split(),
    "colour": "red blue green yellow white grey brown golden silver orange purple black".split(),
    "material": "wood stone glass iron clay wool cotton paper leather copper".split(),
    "number": "two three four five six seven eight nine ten twelve twenty".split(),
    "adverb": "slowly quickly carefully quietly happily patiently gently suddenly calmly "
    "proudly".split(),
    "connective": ["Then", "After that", "Later", "Soon", "Meanwhile", "In the end", "At first",
                   "Before long", "By evening", "The next day", "Still", "For a while"],
}

TOPICS = {
    "weather": [
        "In {season} {weather}, and the {animals} stayed close to their shelter.",
        "The {month} weather was [mild|harsh|strange|pleasant|unsettled] this year.",
        "{time}, {weather}.",
        "When {weather}, people in {town} stayed indoors and [read|talked|cooked|slept|played cards].",
        "Farmers watch the sky closely, because [rain|frost|wind|a dry week] can ruin a [harvest|crop|field] in [a day|a night|a week].",
        "By {time} the [clouds|fog|rain|wind] had [cleared|lifted|passed|eased], and the {tree} trees dripped with water.",
        "A cold wind [came down from|swept across|blew over] the [hills|fields|moor|lake], and the windows rattled in their frames.",
        "The radio said that {weather} in the north, but here the [roads|fields|streets] stayed [dry|calm|quiet].",
        "Nobody could remember a {season} as [wet|dry|warm|cold|windy|long] as this one.",
        "The first snow of the year is always a surprise, even when everyone knows it will come.",
        "In {month} the days grow [longer|shorter], and the light changes [colour|its angle|every week].",
        "After a hot week the rain was welcome, and the [gardens|fields|streets] smelled fresh again.",
        "Thunder rolled [far away|over the valley|above the town], and the {animals} ran for cover.",
    ],
    "town": [
        "{place} was [quiet|busy|crowded|empty|noisy] on {day}.",
        "The streets of {town} are {adj_place} and [lined with|full of|shaded by] {tree} trees.",
        "Every {day} the market in {town} sells {food}, {food} and {food}.",
        "People in {town} still [remember|talk about|laugh about] the year the river [flooded|froze|dried up].",
        "The clock on the town hall [stopped|ran slow|rang thirteen times] one {season}, and nobody fixed it for [weeks|months|a year].",
        "Near {place} there is a {adj_place} [lane|square|street|yard] where children play after school.",
        "A new [bakery|bookshop|cafe|bridge|school|library] opened in {town}, and half the town came to see it.",
        "The {job} lives above the [shop|bakery|post office|workshop] on the corner of [Mill Lane|Church Street|Harbour Road|the square].",
        "From {place} you can see the roofs of {town} and the [hills|sea|forest|river] beyond them.",
        "The bus to {town} leaves {time} and arrives [an hour|two hours|forty minutes] later.",
        "Old houses of [stone|brick|timber] and [slate|plaster|wood] stand along the [river|main road|harbour wall].",
        "On market days the square fills with [stalls|carts|music|voices] from early morning.",
    ],
    "kitchen": [
        "{name} {verb_cook} the [onions|potatoes|carrots|apples|tomatoes|beans] and put them in a [pot|pan|bowl|dish].",
        "For supper we made {dish}, and there was enough left for [lunch|breakfast|the neighbours].",
        "The recipe needs {number} [eggs|cups of flour|spoons of sugar|onions|potatoes], a little salt and some patience.",
        "My {relative} always [said|believed|insisted] that {food} tastes better [the next day|with a little salt|when shared|from a wooden bowl].",
        "The kitchen smelled of {food} and {food}.",
        "Bake the [bread|cake|pie|tart] until it is [golden|brown|firm] and let it cool [before cutting it|on the windowsill|for an hour].",
        "{name} set the table with {colour} plates and [lit a candle|opened the window|called everyone in].",
        "If the soup is too thick, add a little [water|milk|stock] and stir it [slowly|gently|again].",
        "We ate {dish} [by the fire|in the garden|at the long table|on the steps], and nobody said much until it was gone.",
        "The {job} brought {food} from the market, and {name} made {dish} with it.",
        "Good [bread|soup|jam|cheese] takes time, and there is no [trick|shortcut|secret] that replaces it.",
        "After the meal the [children|guests|cousins] washed the dishes while the [kettle|pot|oven] cooled.",
    ],
    "journey": [
        "We took {vehicle} to {town} {time}.",
        "The road to {town} [winds|climbs|runs] through [fields|forests|hills|small villages] for [many miles|an hour|most of the day].",
        "{name} packed {thing}, {thing} and {tool} for the journey.",
        "On the way we stopped at {place} to [rest|eat|ask for directions|look at the view].",
        "[The train|The bus|The ferry|The tram] was [late|crowded|slow|almost empty|on time], so we [read|talked|slept|watched the fields go by].",
        "From the window of [the train|the bus|the tram] we saw {animals} in the fields and a {adj_place} river.",
        "The map showed a [short|shorter|faster] way, but it [ended at a gate|crossed a bog|was closed|went up a steep hill].",
        "It was dark when we reached {town}, and the [inn|hotel|station|square] was still lit.",
        "Travellers [often|sometimes|always] say that the best part of a journey is [the way home|the first morning|the people you meet|the food].",
        "{name} had never been to {town} before and [looked at everything|asked many questions|took a hundred photographs].",
        "We walked [along the coast|over the hills|beside the canal|through the forest] for {number} days.",
    ],
    "work": [
        "The {job} [works|starts work|opens the shop] {time} and [finishes|closes|goes home] at [six|five|dusk|noon].",
        "With {tool} and {tool}, the {job} [repaired|built|mended|cleaned] [a fence|a door|a roof|a boat|a chair|a gate].",
        "{name} learned the trade from [a|an] {job} in {town}.",
        "A good {job} [knows|keeps|cares for] [every tool|the old ways|the customers|the small details].",
        "The workshop was full of [sawdust|shavings|the smell of {material}|half-finished work].",
        "{name} spent the {season} [making|fixing|painting|sorting] [chairs|boats|windows|shelves|baskets|shoes].",
        "It takes [years|a long time|many seasons] to become a [skilled|good|patient] {job}.",
        "The {job} and the {job} [shared|argued about|built] [a wall|a cart|a shed|the price of {material}].",
        "Orders came in [every week|from far away|faster than before], and the {job} hired [an apprentice|a helper|two students].",
        "{name} measured twice and cut once, as every {job} is taught.",
        "At the end of the day the {job} [swept the floor|hung up the tools|counted the money|locked the door] and went home.",
    ],
    "school": [
        "In {subject} class we learned about [rivers|stars|old kingdoms|numbers|the weather|machines|plants].",
        "The teacher explained the idea [slowly|twice|with a drawing|with an example] and then asked questions.",
        "{name} liked {subject} more than {subject}, but worked hard at both.",
        "Students learn best when they try things themselves, make mistakes and try again.",
        "The library had [shelves of|a whole room of|old|new] books about {subject}.",
        "Every {day} the class [went outside|visited {place}|read aloud|wrote a short story].",
        "{name} read a book about [the sea|the moon|birds|trains|old castles|mountains] and wrote {number} pages of notes.",
        "A good question is often more useful than a quick answer.",
        "The children counted the {animals} in the [park|field|pond] and wrote the numbers on the board.",
        "After school {name} [practised the {instrument}|played {sport}|helped at the {job}'s shop|walked home with {name}].",
        "Learning a new language takes patience: a few words every day add up to a lot.",
    ],
    "nature": [
        "The {animal} [crossed|ran along|hid near|waited by] the [path|stream|hedge|edge of the field] {time}.",
        "[In autumn the {tree} trees turn red|In winter the {tree} trees stand bare|In spring the {tree} trees blossom|In summer the {tree} trees give deep shade].",
        "The meadow was full of {flower} and {flower}, and bees moved from one to the next.",
        "{animals} [gathered|hid|slept|fed] [near the water|in the tall grass|under the trees|in the hedges] when {weather}.",
        "We saw [a|an] {animal} by the [river|lake|road|wood], and it [looked at us|ran away|kept eating|did not move].",
        "The forest is [quiet|dark|cool|full of sound] [in summer|at night|after rain|in the early morning].",
        "Mushrooms grow under the {tree} trees in {season}, but only some of them are safe to eat.",
        "The river [runs|winds|rushes] past {place} and under the [stone|wooden|old] bridge.",
        "On clear nights the stars are bright above the [rooftops|fields|hills|lake].",
        "{animals} build their homes [in old trees|under the ground|near the water|in barns], and they return every {season}.",
        "The tracks of [a|an] {animal} crossed the snow and disappeared into the {tree} wood.",
        "In the morning the grass was wet and the air smelled of earth and {flower}.",
    ],
    "sea": [
        "The boats left the harbour {time} and came back with [fish|crabs|nothing|full nets].",
        "Waves broke against the [rocks|harbour wall|pier|cliffs], and the spray reached the road.",
        "The [fisherman|sailor|boatbuilder|harbour master] [mended the nets|painted the boat|checked the ropes|watched the tide] on the [beach|quay|pier].",
        "Gulls followed the ferry all the way to the island.",
        "At low tide the beach is wide, and children look for shells and small crabs among the rocks.",
        "A lighthouse stands at the end of the [point|harbour wall|island], and its light turns all night.",
        "{name} learned to [swim|sail|row|fish] at the age of {number}, taught by [a|an] {job} from {town}.",
        "The sea was [calm|grey|rough|green|silver] {time}, and the boats stayed [in the harbour|close to shore|out late].",
        "Sailors read the clouds and the wind, because the sea does not forgive mistakes.",
        "An old anchor lies in the sand near {place}, covered in rust and weed.",
    ],
    "garden": [
        "{name} planted [beans|peas|carrots|onions|potatoes|lettuce] in {month} and [watered|weeded|checked] them every day.",
        "The garden needs [rain|sun|care|weeding|a new fence] after such a [dry|wet|long|cold] {season}.",
        "By {month} the {tree} tree was heavy with fruit.",
        "My {relative} grows {flower} by the door and [herbs|tomatoes|beans|strawberries] along the wall.",
        "Weeds grow faster than anything you plant, so gardeners are never bored.",
        "The {animals} [ate|dug up|trampled|ignored] the [lettuce|seedlings|flowers|beans], and {name} built a [fence|net|cage] around them.",
        "Compost turns kitchen scraps and leaves into rich dark soil within [a few months|a year|two seasons].",
        "We picked [beans|plums|apples|pears|tomatoes|carrots] and [lettuce|peas|cherries|onions] from the garden and carried them in [a basket|a bucket|an apron|a wheelbarrow].",
        "A garden teaches patience: seeds planted in {season} may not give anything until {season}.",
    ],
    "market": [
        "At the market {name} bought {food}, {food} and {thing}.",
        "The [stall|cart|shop] sold {food} for [two|three|five] coins a [bag|basket|kilo|dozen].",
        "Traders [called out|shouted|sang] their prices, and people [pushed|walked|wandered] between the stalls.",
        "{name} [argued about|asked about|paid for] the price of the {material} [bowls|cups|boxes|baskets] and [won|lost|laughed].",
        "The farmers bring their carts to {place} on {day}s and talk about the weather, which is always too [dry|wet|cold|hot].",
        "By noon the best {food} was [gone|sold out|half the price], and the traders began to pack up.",
        "A [man|woman|boy|girl] at the corner sold {flower} from a bucket of water.",
        "Everything at the market was [fresh|cheap|loud|colourful], and nobody was in a hurry.",
    ],
    "music": [
        "{name} played the {instrument} {time}, and the [neighbours|children|dogs|guests] listened.",
        "The band in {town} [practises|plays|meets] every {day} in [the hall|the square|a barn|the school].",
        "Learning the {instrument} is slow at first, but one day the notes begin to sound like music.",
        "At the festival there was [singing|dancing|a long parade|a small band] until [midnight|late|dawn].",
        "{name} [hummed|whistled|sang] an old song while [working|walking home|cooking|cleaning].",
        "The {instrument} and the {instrument} played together, [softly at first|faster and faster|out of tune|in perfect time].",
        "Music carried across the [water|square|fields|street] on warm evenings.",
    ],
    "science": [
        "Water boils at a lower temperature high in the mountains, where the air is thinner.",
        "Plants use sunlight to turn water and air into the sugars they grow from.",
        "The moon has no light of its own; it shines because it reflects the light of the sun.",
        "Sound travels faster through water than through air, and faster still through [iron|stone|wood].",
        "Ice floats because water grows lighter, for its size, when it freezes.",
        "A magnet pulls on iron, but not on [wood|glass|paper|copper|stone].",
        "Bees carry pollen from flower to flower, and that is how many fruits begin.",
        "If you drop a feather and a stone where there is no air, they fall at the same speed.",
        "The seasons change because the earth is tilted as it travels around the sun.",
        "Clouds are made of tiny drops of water, so small that the air can hold them up.",
        "A shadow is longest in the early morning and late afternoon, when the sun is low.",
        "{name} [measured|recorded|drew|counted] the [rain|temperature|length of the shadow|number of birds] every day for a month and found a pattern.",
        "A good experiment changes one thing at a time and keeps everything else the same.",
        "Heat moves from warm things to cold things, which is why a cup of tea cools on the table.",
    ],
    "home": [
        "{name} [opened|closed|cleaned|painted] the [window|door|shutters|gate] and [looked outside|sat down|went to bed|sighed].",
        "The house was [warm|cold|quiet|full of people|dark] when {name} came home.",
        "On the shelf there was {thing}, {thing} and {thing}.",
        "My {relative} keeps {thing} in a drawer and will not say why.",
        "{name} lost {thing} and found it [a week later|under the bed|in a coat pocket|in the garden].",
        "We sat by the fire and [told stories|played cards|read|listened to the rain].",
        "The cat slept on the [windowsill|warm stove|stairs|pile of clean laundry] all afternoon.",
        "[The roof leaked|The tap dripped|The door creaked|The stairs creaked|The window stuck|The gate squeaked] for years before anyone fixed it.",
        "{name} [swept|tidied|aired|decorated] the house before the [guests|holidays|winter|visitors] arrived.",
    ],
    "sport": [
        "{name} [practises|took up|gave up] {sport} and [trains|trained] every {day} with [friends|the team|a coach|a cousin].",
        "The {sport} match in {town} ended in a [draw|close win|surprise|long argument].",
        "Practice does not make a player perfect, but it makes the hard parts easier.",
        "Our team lost the first {number} games and then won the rest.",
        "{name} [trained|practised|ran] {time} [all winter|for months|every day] and [improved|got faster|won a prize].",
        "The crowd [cheered|groaned|went quiet|clapped] when the [runner crossed the line|ball hit the post|captain fell|boat came in first|goalkeeper slipped].",
    ],
}

STORY = [  # HERO, JOB, TOWN, THING, THEM, SEASON, REL are fixed for one story
    "HERO was a JOB in TOWN.",
    "One SEASON morning, HERO found THING near {place}.",
    "Nobody in TOWN knew where it had come from, so HERO asked the {job}.",
    "The {job} looked at it for a long time and said, \"[I have seen one like this before|This is older than it looks|Keep it somewhere safe|Ask REL].\"",
    "{connective}, HERO [walked|cycled|drove|took {vehicle}] to {town} to find out more.",
    "There HERO met [a|an] {feeling} {job}, who [had a story about it|remembered the old days|knew the answer|laughed and shook their head].",
    "{connective}, {weather}, and HERO waited [at the station|under a tree|in a doorway|at the inn|by the bridge].",
    "\"[Why do you want to know?|Come back tomorrow.|That belonged to my {relative}.|It is not what you think.]\" said the old {job}.",
    "HERO felt {feeling} and [thanked|followed|believed|questioned] the stranger.",
    "{connective}, HERO went home, put THEM on the shelf and [made tea|wrote a letter|told the whole story to REL|went to sleep].",
    "Years later, HERO still [smiled|wondered|thought] about that SEASON.",
]


ADVICE = [
    "A small kindness is remembered longer than a large gift.",
    "It is easier to [fix|mend|change] a plan than to [start|finish|explain] one.",
    "Ask for directions early; pride makes the road longer.",
    "Write things down, because memory [changes|fades|plays tricks] over time.",
    "A tidy workshop saves more time than it costs.",
    "The best time to plant a tree was years ago; the second best time is today.",
    "When in doubt, measure again.",
    "Listen first, then speak.",
    "Rest is part of the work, not a break from it.",
    "A long journey is made of [short walks|small steps|single days].",
]


def expand(t, rng, depth=0, used=None):
    """One random expansion of template `t`; a slot used twice in a sentence gets two values."""
    used = {} if used is None else used
    if depth > 6:
        return t
    # inline alternatives, innermost first
    while "[" in t:
        t = re.sub(r"\[([^\[\]]*)\]", lambda m: rng.choice(m.group(1).split("|")), t)

    def slot(m):
        taken = used.setdefault(m.group(1), set())
        choices = [c for c in S[m.group(1)] if c not in taken] or S[m.group(1)]
        c = rng.choice(choices)
        taken.add(c)
        return expand(c, rng, depth + 1, used)

    return re.sub(r"\{(\w+)\}", slot, t)


def tidy(s):
    s = re.sub(r"\b([Aa]) ([aeiouAEIOU])", lambda m: m.group(1) + "n " + m.group(2), s)
    s = re.sub(r"\b([Aa])n ([^aeiouAEIOU\W])", lambda m: m.group(1) + " " + m.group(2), s)
    return s[0].upper() + s[1:]


def paragraph(rng):
    r = rng.random()
    if r < 0.12:
        # a short story: the template lines in order, some skipped
        lines = [STORY[0], STORY[1]] + [x for x in STORY[2:] if rng.random() < 0.7]
        bind = {"HERO": rng.choice(S["name"]), "JOB": rng.choice(S["job"]),
                "TOWN": rng.choice(S["town"]), "THING": rng.choice(S["thing"]),
                "SEASON": rng.choice(S["season"]),
                "THEM": "it", "REL": "[her|his|their] " + rng.choice(S["relative"])}
        text = " ".join(tidy(expand(re.sub(r"\b[A-Z]{3,}\b", lambda m: bind[m.group(0)], x), rng))
                        for x in lines)
        return re.sub(r'\.(" said)', r',\1', text)
    topic = rng.choice(list(TOPICS))
    k = rng.randint(3, 6)
    picks = rng.sample(TOPICS[topic], min(k, len(TOPICS[topic])))
    out = []
    for i, x in enumerate(picks):
        s = tidy(expand(x, rng))
        first = s.split(" ", 1)[0]
        if i > 0 and rng.random() < 0.25 and (first in S["name"] or first == "We"):
            s = expand("{connective}", rng) + ", " + (s if first != "We" else "we" + s[2:])
        out.append(s)
    if rng.random() < 0.15:
        out.append(tidy(expand(rng.choice(ADVICE), rng)))
    return " ".join(out)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=48000, help="characters to write (about)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--out", default=os.path.join(here, "general.txt"))
    a = ap.parse_args()
    rng = random.Random(a.seed)
    paras, n, seen = [], 0, set()
    while n < a.size:
        p = paragraph(rng)
        if p in seen:
            continue
        seen.add(p)
        paras.append(p)
        n += len(p) + 1
    with open(a.out, "w", encoding="utf-8") as f:
        f.write("\n".join(paras) + "\n")
    print(f"wrote {a.out}: {len(paras)} paragraphs, {n} characters")


if __name__ == "__main__":
    main()
