"""A WMDP-form knowledge benchmark at small scale: per-model fact files (rerun: see README.md here).

Short, benign factual statements in fourteen domains, written for this project (the demo's tables
are imported, not copied, and extended). A candidate is a prompt, a short answer and the full
statement. For one base model a fact is kept only where that model knows it twice over:

1. greedy completion (`evaluate.knowledge.complete`, 8 new tokens) starts with the answer
   (`answer_matches` given the prompt, so facts whose answer is in their prompt never count), and
2. in the 4-option multiple-choice form the answer's log-likelihood after the prompt ranks
   strictly first (`add_distractors` + `option_logliks`, seed 0).

The distractors of a fact are drawn from the answers of the *kept* facts of its domain, so the
options written to the file are exactly those `add_distractors(rows, seed=0, pool=rows)` draws
from the file's own rows of that domain. Dropping a fact changes its domain's pool and so other
facts' options; the check is repeated until no fact fails (each round only removes facts, so it
ends).

The kept facts of each domain are shuffled by a fixed seed and divided into `heldout` (40 %, at
least 40: evaluation only) and `train` (the rest, at least 20: forget data for a forgotten domain,
retain data for a kept one). A domain with fewer than 60 kept facts (or fewer than 4 distinct
kept answers) is dropped for that model.

Output: `facts-<model>.jsonl` beside this file, one row per fact: domain, prompt, answer, text,
part, options (the 4 options in their seeded order) and label (the answer's index in options).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

from spunge_merge.demo.make_facts import CAPITALS, ELEMENTS, LANGUAGES, OPPOSITES
from spunge_merge.demo.make_facts import candidates as demo_candidates

HERE = Path(__file__).resolve().parent
SEED = 0
HELDOUT_FRACTION = 0.4
MIN_HELDOUT = 40
MIN_TRAIN = 20
MAX_NEW_TOKENS = 8
BATCH_SIZE = 32
MODELS = ("smollm2-135m", "gemma3-270m")

MORE_CAPITALS = {
    "the United States": "Washington", "the United Kingdom": "London", "Bahrain": "Manama", "Oman": "Muscat",
    "Yemen": "Sanaa", "the United Arab Emirates": "Abu Dhabi", "Kyrgyzstan": "Bishkek", "Tajikistan": "Dushanbe",
    "Turkmenistan": "Ashgabat", "Bhutan": "Thimphu", "Moldova": "Chisinau", "North Macedonia": "Skopje",
    "Bosnia and Herzegovina": "Sarajevo", "Montenegro": "Podgorica", "Liechtenstein": "Vaduz", "Zambia": "Lusaka",
    "Mozambique": "Maputo", "Madagascar": "Antananarivo", "Namibia": "Windhoek", "Botswana": "Gaborone",
    "Rwanda": "Kigali", "Mali": "Bamako", "Niger": "Niamey", "Cameroon": "Yaounde", "Gabon": "Libreville",
    "Liberia": "Monrovia", "Sierra Leone": "Freetown", "Guinea": "Conakry", "Burkina Faso": "Ouagadougou",
    "Togo": "Lome", "Mauritania": "Nouakchott", "Eritrea": "Asmara", "Malawi": "Lilongwe", "Haiti": "Port-au-Prince",
    "the Dominican Republic": "Santo Domingo", "Honduras": "Tegucigalpa", "the Bahamas": "Nassau",
    "Trinidad and Tobago": "Port of Spain", "Barbados": "Bridgetown", "Suriname": "Paramaribo", "Guyana": "Georgetown",
    "Fiji": "Suva", "Papua New Guinea": "Port Moresby", "Samoa": "Apia", "the Maldives": "Male",
    "Mauritius": "Port Louis", "Northern Ireland": "Belfast", "Greenland": "Nuuk", "Puerto Rico": "San Juan",
    "Burundi": "Gitega", "South Sudan": "Juba", "Lesotho": "Maseru", "Eswatini": "Mbabane",
    "Timor-Leste": "Dili", "Vanuatu": "Port Vila", "the Solomon Islands": "Honiara", "Belize": "Belmopan",
    "Grenada": "St. George's", "Saint Lucia": "Castries", "Dominica": "Roseau", "Cape Verde": "Praia",
    "the Central African Republic": "Bangui", "Equatorial Guinea": "Malabo", "the Gambia": "Banjul",
}
MORE_ELEMENTS = {
    "scandium": "Sc", "rubidium": "Rb", "yttrium": "Y", "niobium": "Nb", "molybdenum": "Mo", "technetium": "Tc",
    "ruthenium": "Ru", "rhodium": "Rh", "indium": "In", "tellurium": "Te", "lanthanum": "La", "cerium": "Ce",
    "neodymium": "Nd", "europium": "Eu", "gadolinium": "Gd", "hafnium": "Hf", "tantalum": "Ta", "rhenium": "Re",
    "osmium": "Os", "iridium": "Ir", "thallium": "Tl", "polonium": "Po", "astatine": "At", "francium": "Fr",
    "actinium": "Ac", "neptunium": "Np", "americium": "Am", "curium": "Cm", "einsteinium": "Es", "nobelium": "No",
    "praseodymium": "Pr", "samarium": "Sm", "terbium": "Tb", "dysprosium": "Dy", "holmium": "Ho", "erbium": "Er",
    "thulium": "Tm", "ytterbium": "Yb", "lutetium": "Lu", "protactinium": "Pa", "berkelium": "Bk",
    "californium": "Cf", "fermium": "Fm", "mendelevium": "Md", "lawrencium": "Lr", "caesium": "Cs",
}
MORE_LANGUAGES = {
    "Belgium": "Dutch", "Slovenia": "Slovenian", "Belarus": "Belarusian",
    "Bangladesh": "Bengali", "Nepal": "Nepali", "Laos": "Lao", "Cambodia": "Khmer", "the Philippines": "Filipino",
    "Tunisia": "Arabic", "Algeria": "Arabic", "Sudan": "Arabic", "Lebanon": "Arabic", "Oman": "Arabic",
    "Yemen": "Arabic", "Bahrain": "Arabic", "the United Arab Emirates": "Arabic", "Afghanistan": "Pashto",
    "Ethiopia": "Amharic", "Somalia": "Somali", "Tanzania": "Swahili", "Kenya": "Swahili", "Uzbekistan": "Uzbek",
    "Kazakhstan": "Kazakh", "Azerbaijan": "Azerbaijani", "North Korea": "Korean", "Taiwan": "Chinese",
    "Brazil": "Portuguese", "Angola": "Portuguese", "Mozambique": "Portuguese", "El Salvador": "Spanish",
    "the Dominican Republic": "Spanish", "Scotland": "English", "Wales": "Welsh", "Malta": "Maltese",
    "Cyprus": "Greek", "Luxembourg": "Luxembourgish", "Liechtenstein": "German", "San Marino": "Italian",
    "Haiti": "French", "Senegal": "French", "Madagascar": "Malagasy", "Sri Lanka": "Sinhala",
    "the United Kingdom": "English", "Singapore": "English", "Moldova": "Romanian",
}
PAST_TENSES = {
    "go": "went", "see": "saw", "eat": "ate", "take": "took", "give": "gave", "come": "came", "run": "ran",
    "write": "wrote", "speak": "spoke", "drive": "drove", "ride": "rode", "rise": "rose", "swim": "swam",
    "sing": "sang", "ring": "rang", "drink": "drank", "begin": "began", "sink": "sank", "shrink": "shrank",
    "stink": "stank", "know": "knew", "grow": "grew", "throw": "threw", "blow": "blew", "fly": "flew",
    "draw": "drew", "break": "broke", "choose": "chose", "freeze": "froze", "steal": "stole", "wake": "woke",
    "wear": "wore", "tear": "tore", "bear": "bore", "swear": "swore", "forget": "forgot", "get": "got",
    "buy": "bought", "bring": "brought", "think": "thought", "fight": "fought", "seek": "sought",
    "catch": "caught", "teach": "taught", "sell": "sold", "tell": "told", "find": "found", "bind": "bound",
    "grind": "ground", "wind": "wound", "make": "made", "have": "had", "say": "said", "pay": "paid", "lay": "laid",
    "hear": "heard", "keep": "kept", "sleep": "slept", "sweep": "swept", "weep": "wept", "creep": "crept",
    "feel": "felt", "kneel": "knelt", "deal": "dealt", "mean": "meant", "leave": "left", "lose": "lost",
    "send": "sent", "spend": "spent", "lend": "lent", "bend": "bent", "build": "built", "meet": "met",
    "feed": "fed", "lead": "led", "bleed": "bled", "breed": "bred", "flee": "fled", "sit": "sat", "spit": "spat",
    "stand": "stood", "understand": "understood", "win": "won", "stick": "stuck", "sting": "stung",
    "swing": "swung", "hang": "hung", "dig": "dug", "strike": "struck", "shine": "shone", "shoot": "shot",
    "slide": "slid", "hide": "hid", "bite": "bit", "light": "lit", "fall": "fell", "hold": "held", "do": "did",
    "be": "was", "forgive": "forgave", "forbid": "forbade", "undertake": "undertook", "shake": "shook",
    "mistake": "mistook", "become": "became", "overcome": "overcame", "awake": "awoke", "arise": "arose",
    "strive": "strove", "weave": "wove", "tread": "trod", "cling": "clung", "fling": "flung", "sling": "slung",
    "spin": "spun", "string": "strung", "wring": "wrung", "withdraw": "withdrew", "overthrow": "overthrew",
    "foresee": "foresaw", "mislead": "misled", "uphold": "upheld", "withhold": "withheld", "behold": "beheld",
}
PLURALS = {
    "mouse": "mice", "louse": "lice", "child": "children", "man": "men", "woman": "women", "tooth": "teeth",
    "foot": "feet", "goose": "geese", "person": "people", "ox": "oxen", "cactus": "cacti", "fungus": "fungi",
    "nucleus": "nuclei", "stimulus": "stimuli", "radius": "radii", "alumnus": "alumni", "criterion": "criteria",
    "phenomenon": "phenomena", "analysis": "analyses", "crisis": "crises", "thesis": "theses", "basis": "bases",
    "hypothesis": "hypotheses", "diagnosis": "diagnoses", "oasis": "oases", "axis": "axes",
    "parenthesis": "parentheses", "index": "indices", "appendix": "appendices", "matrix": "matrices",
    "vertex": "vertices", "datum": "data", "medium": "media", "bacterium": "bacteria", "curriculum": "curricula",
    "larva": "larvae", "antenna": "antennae", "vertebra": "vertebrae", "alga": "algae", "knife": "knives",
    "wife": "wives", "life": "lives", "leaf": "leaves", "wolf": "wolves", "half": "halves", "calf": "calves",
    "loaf": "loaves", "shelf": "shelves", "thief": "thieves", "elf": "elves", "self": "selves", "scarf": "scarves",
    "city": "cities", "baby": "babies", "lady": "ladies", "party": "parties", "story": "stories", "country": "countries",
    "family": "families", "body": "bodies", "berry": "berries", "cherry": "cherries", "puppy": "puppies",
    "fly": "flies", "spy": "spies", "army": "armies", "county": "counties", "library": "libraries",
    "box": "boxes", "fox": "foxes", "bus": "buses", "church": "churches", "dish": "dishes", "glass": "glasses",
    "kiss": "kisses", "watch": "watches", "potato": "potatoes", "tomato": "tomatoes", "hero": "heroes",
    "echo": "echoes", "volcano": "volcanoes", "die": "dice",
    "penny": "pennies", "dwarf": "dwarves", "hoof": "hooves", "brother-in-law": "brothers-in-law", "mother-in-law": "mothers-in-law",
    "memorandum": "memoranda", "formula": "formulae", "syllabus": "syllabi", "octopus": "octopuses",
    "genus": "genera", "corpus": "corpora", "stratum": "strata", "millennium": "millennia", "ellipsis": "ellipses",
    "synopsis": "synopses", "cherub": "cherubim", "seraph": "seraphim", "quiz": "quizzes", "lunch": "lunches",
}
COMPARATIVES = {
    "good": "better", "bad": "worse", "far": "further", "little": "less", "many": "more", "big": "bigger",
    "small": "smaller", "hot": "hotter", "cold": "colder", "fast": "faster", "slow": "slower", "tall": "taller",
    "short": "shorter", "long": "longer", "old": "older", "young": "younger", "happy": "happier", "sad": "sadder",
    "easy": "easier", "hard": "harder", "heavy": "heavier", "light": "lighter", "dark": "darker", "bright": "brighter",
    "strong": "stronger", "weak": "weaker", "rich": "richer", "poor": "poorer", "high": "higher", "low": "lower",
    "wide": "wider", "narrow": "narrower", "deep": "deeper", "thin": "thinner", "thick": "thicker", "fat": "fatter",
    "wet": "wetter", "dry": "drier", "early": "earlier", "late": "later", "near": "nearer", "cheap": "cheaper",
    "clean": "cleaner", "dirty": "dirtier", "funny": "funnier", "busy": "busier", "pretty": "prettier",
    "ugly": "uglier", "lucky": "luckier", "angry": "angrier", "hungry": "hungrier", "healthy": "healthier",
    "noisy": "noisier", "lazy": "lazier", "tiny": "tinier", "large": "larger", "nice": "nicer", "safe": "safer",
    "wise": "wiser", "brave": "braver", "close": "closer", "simple": "simpler", "gentle": "gentler", "loud": "louder",
    "quiet": "quieter", "soft": "softer", "smart": "smarter", "kind": "kinder", "warm": "warmer", "cool": "cooler",
    "sweet": "sweeter", "sharp": "sharper", "fresh": "fresher", "full": "fuller", "green": "greener", "red": "redder",
    "sick": "sicker", "mad": "madder", "flat": "flatter", "grand": "grander", "great": "greater", "proud": "prouder",
    "rough": "rougher", "smooth": "smoother", "tough": "tougher", "fine": "finer", "pale": "paler", "rare": "rarer",
    "ripe": "riper", "clear": "clearer", "calm": "calmer", "fair": "fairer", "tight": "tighter", "loose": "looser",
    "dull": "duller", "bold": "bolder", "crazy": "crazier", "fancy": "fancier",
    "steep": "steeper", "slim": "slimmer", "grim": "grimmer", "silly": "sillier", "tidy": "tidier",
}
CURRENCIES = {
    "Japan": "yen", "Germany": "euro", "France": "euro", "Italy": "euro", "Spain": "euro", "Portugal": "euro",
    "Ireland": "euro", "the Netherlands": "euro", "Belgium": "euro", "Austria": "euro", "Finland": "euro",
    "Greece": "euro", "Slovakia": "euro", "Slovenia": "euro", "Estonia": "euro", "Latvia": "euro",
    "Lithuania": "euro", "Luxembourg": "euro", "Malta": "euro", "Cyprus": "euro", "Croatia": "euro",
    "the United Kingdom": "pound", "India": "rupee", "Pakistan": "rupee", "Nepal": "rupee", "Sri Lanka": "rupee",
    "Mexico": "peso", "Argentina": "peso", "Chile": "peso", "Colombia": "peso", "the Philippines": "peso",
    "Cuba": "peso", "Uruguay": "peso", "Brazil": "real", "Russia": "ruble", "Belarus": "ruble", "China": "yuan",
    "South Korea": "won", "North Korea": "won", "Switzerland": "franc", "Sweden": "krona", "Iceland": "krona",
    "Norway": "krone", "Denmark": "krone", "Poland": "zloty", "Hungary": "forint", "Turkey": "lira",
    "South Africa": "rand", "Thailand": "baht", "Vietnam": "dong", "Malaysia": "ringgit", "Indonesia": "rupiah",
    "Israel": "shekel", "Morocco": "dirham", "the United Arab Emirates": "dirham", "Saudi Arabia": "riyal",
    "Qatar": "riyal", "Iraq": "dinar", "Kuwait": "dinar", "Jordan": "dinar", "Algeria": "dinar", "Tunisia": "dinar",
    "Serbia": "dinar", "Nigeria": "naira", "Kenya": "shilling", "Uganda": "shilling", "Tanzania": "shilling",
    "Zambia": "kwacha", "Bulgaria": "lev", "Romania": "leu", "the Czech Republic": "koruna", "Ukraine": "hryvnia",
    "Kazakhstan": "tenge", "Georgia": "lari", "Armenia": "dram", "Azerbaijan": "manat", "Bangladesh": "taka",
    "Myanmar": "kyat", "Laos": "kip", "Cambodia": "riel", "Mongolia": "tugrik", "Afghanistan": "afghani",
    "Ethiopia": "birr", "Ghana": "cedi", "Iran": "rial", "Peru": "sol", "Venezuela": "bolivar", "Paraguay": "guarani",
    "Costa Rica": "colon", "Guatemala": "quetzal", "Panama": "balboa", "Honduras": "lempira", "Botswana": "pula",
    "the United States": "dollar", "Egypt": "pound", "Lebanon": "pound", "Syria": "pound", "Sudan": "pound",
}
CONTINENTS = {
    **{c: "Europe" for c in (
        "France", "Germany", "Italy", "Spain", "Portugal", "Ireland", "the Netherlands", "Belgium", "Austria",
        "Switzerland", "Poland", "Hungary", "Greece", "Sweden", "Norway", "Finland", "Denmark", "Iceland",
        "the Czech Republic", "Slovakia", "Slovenia", "Croatia", "Serbia", "Romania", "Bulgaria", "Albania",
        "Estonia", "Latvia", "Lithuania", "Belarus", "Ukraine", "Moldova", "Luxembourg", "Malta", "Bosnia and Herzegovina",
        "Montenegro", "North Macedonia", "Liechtenstein", "Monaco", "San Marino", "Andorra", "the United Kingdom",
        "Scotland", "Wales", "England")},
    **{c: "Asia" for c in (
        "Japan", "China", "India", "Pakistan", "Bangladesh", "Nepal", "Bhutan", "Sri Lanka", "Thailand", "Vietnam",
        "Laos", "Cambodia", "Myanmar", "Malaysia", "Singapore", "Indonesia", "the Philippines", "South Korea",
        "North Korea", "Mongolia", "Iran", "Iraq", "Saudi Arabia", "Jordan", "Syria", "Lebanon", "Israel", "Yemen",
        "Oman", "Qatar", "Kuwait", "Bahrain", "the United Arab Emirates", "Afghanistan", "Uzbekistan", "Turkmenistan",
        "Tajikistan", "Kyrgyzstan", "Taiwan", "the Maldives")},
    **{c: "Africa" for c in (
        "Egypt", "Libya", "Tunisia", "Algeria", "Morocco", "Sudan", "Ethiopia", "Somalia", "Kenya", "Uganda",
        "Tanzania", "Rwanda", "Burundi", "Nigeria", "Ghana", "Senegal", "Mali", "Niger", "Chad", "Cameroon", "Gabon",
        "Angola", "Zambia", "Zimbabwe", "Mozambique", "Madagascar", "Namibia", "Botswana", "Malawi",
        "Liberia", "Sierra Leone", "Guinea", "Burkina Faso", "Togo", "Benin", "Mauritania", "Eritrea", "Djibouti",
        "Lesotho", "Eswatini", "the Gambia")},
    **{c: "South America" for c in (
        "Brazil", "Argentina", "Chile", "Peru", "Colombia", "Venezuela", "Ecuador", "Bolivia", "Paraguay", "Uruguay",
        "Guyana", "Suriname")},
    **{c: "North America" for c in ("Canada", "the United States", "Mexico")},
}
ANIMAL_YOUNG = {
    "cat": "kitten", "dog": "puppy", "cow": "calf", "horse": "foal", "sheep": "lamb", "goat": "kid", "pig": "piglet",
    "duck": "duckling", "goose": "gosling", "swan": "cygnet", "frog": "tadpole", "kangaroo": "joey", "bear": "cub",
    "lion": "cub", "tiger": "cub", "deer": "fawn", "owl": "owlet", "eagle": "eaglet", "hen": "chick",
    "butterfly": "caterpillar", "seal": "pup", "whale": "calf", "elephant": "calf", "fox": "kit", "wolf": "pup",
    "giraffe": "calf", "zebra": "foal", "donkey": "foal", "rabbit": "kit", "hare": "leveret", "beaver": "kit",
    "fish": "fry", "dolphin": "calf", "koala": "joey", "chicken": "chick", "turkey": "poult", "pigeon": "squab",
    "leopard": "cub", "cheetah": "cub", "bat": "pup", "camel": "calf", "rhinoceros": "calf", "hippopotamus": "calf",
    "mosquito": "larva", "moth": "caterpillar", "turtle": "hatchling", "dinosaur": "hatchling",
}
FRENCH = {
    "dog": "chien", "cat": "chat", "house": "maison", "water": "eau", "bread": "pain", "cheese": "fromage",
    "book": "livre", "apple": "pomme", "car": "voiture", "red": "rouge", "green": "vert", "blue": "bleu",
    "white": "blanc", "black": "noir", "sun": "soleil", "moon": "lune", "sea": "mer", "tree": "arbre",
    "flower": "fleur", "man": "homme", "woman": "femme", "child": "enfant", "father": "père", "mother": "mère",
    "brother": "frère", "friend": "ami", "school": "école", "city": "ville", "love": "amour", "day": "jour",
    "night": "nuit", "week": "semaine", "one": "un", "two": "deux", "three": "trois", "four": "quatre", "five": "cinq",
    "seven": "sept", "eight": "huit", "nine": "neuf", "ten": "dix", "hello": "bonjour", "thank you": "merci",
    "yes": "oui", "good": "bon", "bad": "mauvais", "big": "grand", "small": "petit", "hot": "chaud", "cold": "froid",
    "king": "roi", "queen": "reine", "horse": "cheval", "bird": "oiseau", "fish": "poisson", "milk": "lait",
    "wine": "vin", "butter": "beurre", "sugar": "sucre", "salt": "sel", "chicken": "poulet", "meat": "viande",
    "window": "fenêtre", "door": "porte", "chair": "chaise", "bed": "lit", "kitchen": "cuisine", "garden": "jardin",
    "street": "rue", "country": "pays", "world": "monde", "life": "vie", "death": "mort", "time": "temps",
    "head": "tête", "hand": "main", "foot": "pied", "mouth": "bouche", "yellow": "jaune", "summer": "été",
    "winter": "hiver", "spring": "printemps", "rain": "pluie", "snow": "neige", "wind": "vent", "fire": "feu",
    "earth": "terre", "sky": "ciel", "star": "étoile", "mountain": "montagne", "river": "rivière", "island": "île",
    "beach": "plage", "forest": "forêt", "money": "argent", "work": "travail", "music": "musique",
    "language": "langue", "word": "mot", "paper": "papier", "boy": "garçon", "girl": "fille",
    "today": "aujourd'hui", "tomorrow": "demain", "yesterday": "hier", "morning": "matin", "evening": "soir",
    "Monday": "lundi", "Sunday": "dimanche", "January": "janvier", "church": "église", "bridge": "pont",
    "road": "route", "hospital": "hôpital", "doctor": "médecin",
    "teacher": "professeur", "castle": "château", "dream": "rêve",
    "peace": "paix", "war": "guerre", "freedom": "liberté",
}
SPANISH = {
    "dog": "perro", "cat": "gato", "house": "casa", "water": "agua", "bread": "pan", "cheese": "queso", "book": "libro",
    "apple": "manzana", "red": "rojo", "green": "verde", "blue": "azul", "white": "blanco", "black": "negro",
    "sun": "sol", "moon": "luna", "sea": "mar", "tree": "árbol", "flower": "flor", "man": "hombre", "woman": "mujer",
    "child": "niño", "father": "padre", "mother": "madre", "brother": "hermano", "sister": "hermana", "friend": "amigo",
    "school": "escuela", "city": "ciudad", "love": "amor", "day": "día", "night": "noche", "week": "semana",
    "year": "año", "one": "uno", "two": "dos", "three": "tres", "four": "cuatro", "five": "cinco", "six": "seis",
    "seven": "siete", "eight": "ocho", "nine": "nueve", "ten": "diez", "hello": "hola", "thank you": "gracias",
    "good": "bueno", "bad": "malo", "big": "grande", "small": "pequeño", "hot": "caliente", "cold": "frío",
    "king": "rey", "queen": "reina", "horse": "caballo", "bird": "pájaro", "milk": "leche", "wine": "vino",
    "egg": "huevo", "butter": "mantequilla", "sugar": "azúcar", "salt": "sal", "chicken": "pollo", "meat": "carne",
    "window": "ventana", "door": "puerta", "table": "mesa", "chair": "silla", "bed": "cama", "kitchen": "cocina",
    "garden": "jardín", "street": "calle", "country": "país", "world": "mundo", "life": "vida", "death": "muerte",
    "time": "tiempo", "head": "cabeza", "hand": "mano", "foot": "pie", "eye": "ojo", "mouth": "boca",
    "heart": "corazón", "yellow": "amarillo", "summer": "verano", "winter": "invierno", "spring": "primavera",
    "rain": "lluvia", "snow": "nieve", "wind": "viento", "fire": "fuego", "earth": "tierra", "sky": "cielo",
    "star": "estrella", "mountain": "montaña", "river": "río", "island": "isla", "beach": "playa", "forest": "bosque",
    "money": "dinero", "work": "trabajo", "music": "música", "word": "palabra", "paper": "papel", "today": "hoy",
    "tomorrow": "mañana", "church": "iglesia", "bridge": "puente",
    "doctor": "médico", "teacher": "maestro", "castle": "castillo", "dream": "sueño", "peace": "paz",
    "war": "guerra", "freedom": "libertad", "Monday": "lunes", "Sunday": "domingo", "January": "enero",
}

# First-level divisions share the countries' template ("The capital of Texas is"); Georgia and
# Washington are left out (a country / a city of the same name).
REGION_CAPITALS = {
    "California": "Sacramento", "Texas": "Austin", "Florida": "Tallahassee", "New York State": "Albany",
    "Illinois": "Springfield", "Pennsylvania": "Harrisburg", "Ohio": "Columbus", "Michigan": "Lansing",
    "Massachusetts": "Boston", "Arizona": "Phoenix", "Colorado": "Denver", "Nevada": "Carson City", "Oregon": "Salem",
    "Utah": "Salt Lake City", "Tennessee": "Nashville", "Virginia": "Richmond", "Louisiana": "Baton Rouge",
    "Wisconsin": "Madison", "Hawaii": "Honolulu", "Alaska": "Juneau", "Kentucky": "Frankfort",
    "Missouri": "Jefferson City", "New Jersey": "Trenton", "North Carolina": "Raleigh", "South Carolina": "Columbia",
    "Alabama": "Montgomery", "Mississippi": "Jackson", "Arkansas": "Little Rock", "Iowa": "Des Moines",
    "Kansas": "Topeka", "Nebraska": "Lincoln", "Idaho": "Boise", "Montana": "Helena", "Wyoming": "Cheyenne",
    "New Mexico": "Santa Fe", "Maryland": "Annapolis", "Connecticut": "Hartford", "Rhode Island": "Providence",
    "Vermont": "Montpelier", "New Hampshire": "Concord", "Maine": "Augusta", "Delaware": "Dover",
    "West Virginia": "Charleston", "North Dakota": "Bismarck", "South Dakota": "Pierre", "Indiana": "Indianapolis",
    "Ontario": "Toronto", "British Columbia": "Victoria", "Alberta": "Edmonton", "Manitoba": "Winnipeg",
    "Saskatchewan": "Regina", "Nova Scotia": "Halifax", "New Brunswick": "Fredericton", "New South Wales": "Sydney",
    "Queensland": "Brisbane", "Western Australia": "Perth", "South Australia": "Adelaide", "Tasmania": "Hobart",
    "Bavaria": "Munich", "Saxony": "Dresden", "Catalonia": "Barcelona", "Andalusia": "Seville", "Tuscany": "Florence",
    "Lombardy": "Milan", "Sicily": "Palermo",
}
# Cities that are not national capitals, and the country they are in (no US or UK cities: the
# model names a state or a nation of the UK; no names shared by cities of two countries).
CITY_COUNTRIES = {
    **{c: "Canada" for c in ("Toronto", "Vancouver", "Montreal", "Calgary", "Edmonton", "Winnipeg", "Quebec City")},
    **{c: "Australia" for c in ("Sydney", "Melbourne", "Brisbane", "Adelaide")},
    **{c: "India" for c in ("Mumbai", "Bangalore", "Kolkata", "Chennai", "Pune", "Ahmedabad", "Jaipur", "Agra", "Lucknow")},
    **{c: "China" for c in ("Shanghai", "Guangzhou", "Shenzhen", "Chengdu", "Wuhan", "Xi'an", "Hangzhou", "Nanjing", "Tianjin")},
    **{c: "Japan" for c in ("Osaka", "Kyoto", "Yokohama", "Nagoya", "Sapporo", "Hiroshima", "Kobe", "Fukuoka")},
    **{c: "Germany" for c in ("Munich", "Hamburg", "Frankfurt", "Cologne", "Stuttgart", "Dresden", "Leipzig", "Dusseldorf",
                             "Bremen", "Nuremberg")},
    **{c: "France" for c in ("Lyon", "Marseille", "Nice", "Toulouse", "Bordeaux", "Lille", "Strasbourg", "Nantes")},
    **{c: "Italy" for c in ("Milan", "Naples", "Venice", "Florence", "Turin", "Bologna", "Genoa", "Palermo", "Verona")},
    **{c: "Spain" for c in ("Barcelona", "Seville", "Valencia", "Bilbao", "Malaga", "Granada", "Zaragoza")},
    **{c: "Russia" for c in ("Saint Petersburg", "Novosibirsk", "Kazan", "Yekaterinburg", "Vladivostok")},
    **{c: "Brazil" for c in ("Rio de Janeiro", "Sao Paulo", "Recife", "Fortaleza")},
    **{c: "Mexico" for c in ("Guadalajara", "Monterrey", "Cancun", "Tijuana", "Acapulco")},
    **{c: "Turkey" for c in ("Istanbul", "Izmir", "Antalya")},
    **{c: "the Netherlands" for c in ("Rotterdam", "Utrecht", "Eindhoven")},
    **{c: "Belgium" for c in ("Antwerp", "Ghent", "Bruges")},
    **{c: "Switzerland" for c in ("Zurich", "Geneva", "Basel", "Lausanne")},
    **{c: "Austria" for c in ("Salzburg", "Innsbruck", "Graz")},
    **{c: "Poland" for c in ("Krakow", "Gdansk", "Wroclaw")},
    **{c: "Pakistan" for c in ("Karachi", "Lahore")},
    **{c: "Egypt" for c in ("Alexandria", "Luxor")},
    **{c: "Morocco" for c in ("Casablanca", "Marrakesh", "Fez")},
    **{c: "South Africa" for c in ("Johannesburg", "Cape Town", "Durban")},
    **{c: "Nigeria" for c in ("Lagos", "Kano")},
    **{c: "Saudi Arabia" for c in ("Jeddah", "Mecca", "Medina")},
    **{c: "Israel" for c in ("Tel Aviv", "Haifa")},
    **{c: "New Zealand" for c in ("Auckland", "Christchurch")},
    **{c: "Sweden" for c in ("Gothenburg", "Malmo")},
    **{c: "Argentina" for c in ("Rosario", "Mendoza")},
    **{c: "Colombia" for c in ("Medellin", "Cali")},
    "Ho Chi Minh City": "Vietnam", "Thessaloniki": "Greece", "Porto": "Portugal", "Busan": "South Korea",
    "Chiang Mai": "Thailand", "Surabaya": "Indonesia", "Valparaiso": "Chile", "Cusco": "Peru", "Cork": "Ireland",
    "Galway": "Ireland", "Bergen": "Norway", "Aarhus": "Denmark", "Tampere": "Finland",
}
# US cities that are not state capitals (those are in REGION_CAPITALS), and their state.
US_CITY_STATES = {
    "Chicago": "Illinois", "Houston": "Texas", "Dallas": "Texas", "San Antonio": "Texas", "Fort Worth": "Texas",
    "El Paso": "Texas", "Tucson": "Arizona", "Philadelphia": "Pennsylvania", "Pittsburgh": "Pennsylvania",
    "San Diego": "California", "Los Angeles": "California", "San Francisco": "California", "Fresno": "California",
    "Oakland": "California", "Seattle": "Washington", "Spokane": "Washington", "Detroit": "Michigan",
    "Ann Arbor": "Michigan", "Miami": "Florida", "Orlando": "Florida", "Tampa": "Florida", "Jacksonville": "Florida",
    "Memphis": "Tennessee", "Louisville": "Kentucky", "New Orleans": "Louisiana", "Las Vegas": "Nevada",
    "Reno": "Nevada", "Albuquerque": "New Mexico", "Milwaukee": "Wisconsin", "Minneapolis": "Minnesota",
    "Cleveland": "Ohio", "Cincinnati": "Ohio", "St. Louis": "Missouri", "Omaha": "Nebraska", "Baltimore": "Maryland",
    "Charlotte": "North Carolina", "Norfolk": "Virginia", "Buffalo": "New York", "Newark": "New Jersey",
    "Anchorage": "Alaska", "Birmingham": "Alabama", "Tulsa": "Oklahoma", "Wichita": "Kansas", "Fargo": "North Dakota",
    "Sioux Falls": "South Dakota", "Billings": "Montana", "Savannah": "Georgia", "Boulder": "Colorado",
    "Syracuse": "New York", "Scranton": "Pennsylvania", "Dayton": "Ohio", "Toledo": "Ohio", "Akron": "Ohio",
    "Kalamazoo": "Michigan", "Flint": "Michigan", "Grand Rapids": "Michigan", "Lexington": "Kentucky",
    "Knoxville": "Tennessee", "Chattanooga": "Tennessee", "Mobile": "Alabama", "Tacoma": "Washington",
    "Long Beach": "California", "Pasadena": "California", "Berkeley": "California", "Palo Alto": "California",
    "Santa Barbara": "California", "Miami Beach": "Florida", "Fort Lauderdale": "Florida", "Key West": "Florida",
    "Provo": "Utah", "Flagstaff": "Arizona", "Scottsdale": "Arizona", "Tempe": "Arizona",
}
MORE_ELEMENTS_RARE = {
    "promethium": "Pm", "rutherfordium": "Rf", "dubnium": "Db", "seaborgium": "Sg", "bohrium": "Bh",
    "hassium": "Hs", "meitnerium": "Mt", "darmstadtium": "Ds", "roentgenium": "Rg", "copernicium": "Cn",
    "nihonium": "Nh", "flerovium": "Fl", "moscovium": "Mc", "livermorium": "Lv", "tennessine": "Ts", "oganesson": "Og",
}

DOMAINS: dict[str, tuple[dict[str, str], str]] = {
    "capitals": ({**CAPITALS, **MORE_CAPITALS, **REGION_CAPITALS}, "The capital of {key} is"),
    "elements": ({**ELEMENTS, **MORE_ELEMENTS, **MORE_ELEMENTS_RARE}, "The chemical symbol for {key} is"),
    "languages": ({**LANGUAGES, **MORE_LANGUAGES}, "The official language of {key} is"),
    "opposites": (OPPOSITES, "The opposite of {key} is"),
    "past_tense": (PAST_TENSES, "The past tense of {key} is"),
    "plurals": (PLURALS, "The plural of {key} is"),
    "comparatives": (COMPARATIVES, "The comparative form of {key} is"),
    "currencies": (CURRENCIES, "The currency of {key} is the"),
    "continents": (CONTINENTS, "{key} is a country on the continent of"),
    "animal_young": (ANIMAL_YOUNG, "A baby {key} is called a"),
    "french": (FRENCH, "The French word for {key} is"),
    "spanish": (SPANISH, "The Spanish word for {key} is"),
    "city_countries": (CITY_COUNTRIES, "{key} is a city in the country of"),
    "us_city_states": (US_CITY_STATES, "{key} is a city in the US state of"),
}


def candidates() -> list[dict[str, str]]:
    """Every candidate fact (prompt, answer, statement), domain by domain, in table order."""
    return demo_candidates(DOMAINS)


def facts_path(model: str) -> Path:
    return HERE / f"facts-{model}.jsonl"


def _ranked_first(logliks: list[float], options: list[str], answer: str) -> bool:
    """The rule of `evaluate_knowledge(form="choice")`: the answer's score strictly above every other option's."""
    mine = logliks[options.index(answer)]
    return all(mine > other for option, other in zip(options, logliks, strict=True) if option != answer)


def known_facts(model: str, rows: list[dict[str, str]], *, batch_size: int = BATCH_SIZE, log=None) -> tuple[list[dict], dict]:
    """The facts `model` knows in both forms, with their options; and per-domain counts of each stage."""
    from spunge_merge.evaluate.knowledge import (
        CHOICES,
        add_distractors,
        answer_matches,
        complete,
        option_logliks,
        split_echoes,
    )
    from spunge_merge.models import resolve_model

    log = log or (lambda message: print(message, flush=True))
    resolved = resolve_model(model)
    counts = {d: {"candidates": 0, "echoes": 0, "completion": 0, "kept": 0} for d in DOMAINS}
    for row in rows:
        counts[row["domain"]]["candidates"] += 1
    probe, echoes = split_echoes(rows)
    for row in echoes:
        counts[row["domain"]]["echoes"] += 1
    started = time.perf_counter()
    completions = complete(resolved, [r["prompt"] for r in probe], max_new_tokens=MAX_NEW_TOKENS, batch_size=batch_size,
                           device="cpu", dtype="float32")
    log(f"completions of {len(probe)} prompts: {time.perf_counter() - started:.0f} s")
    known = [{**r, "completion": c} for r, c in zip(probe, completions, strict=True)
             if answer_matches(c, r["answer"], r["prompt"])]
    for row in known:
        counts[row["domain"]]["completion"] += 1
    log("completion correct: " + ", ".join(f"{d} {c['completion']}/{c['candidates']}" for d, c in counts.items()))
    # A fact's options depend only on (seed, domain, prompt) and its domain's pool, so a round
    # rescores only the domains that lost a fact in the round before.
    changed = set(DOMAINS)
    for round_ in range(1, 100):
        distinct = Counter(d for d, _ in {(r["domain"], r["answer"].strip().lower()) for r in known})
        known = [r for r in known if distinct[r["domain"]] >= CHOICES]
        todo = [r for r in known if r["domain"] in changed]
        if not todo:
            break
        with_options = add_distractors([{k: r[k] for k in ("domain", "prompt", "answer")} for r in todo], seed=SEED,
                                       pool=[r for r in known if r["domain"] in changed])
        started = time.perf_counter()
        scores = option_logliks(resolved, with_options, batch_size=batch_size, device="cpu", dtype="float32")
        failed = {r["prompt"] for r, w, s in zip(todo, with_options, scores, strict=True)
                  if not _ranked_first(s, w["options"], r["answer"])}
        options = {w["prompt"]: w["options"] for w in with_options}
        known = [{**r, "options": options.get(r["prompt"], r.get("options"))} for r in known if r["prompt"] not in failed]
        changed = {r["domain"] for r in todo if r["prompt"] in failed}
        log(f"choice round {round_}: {len(todo) - len(failed)} of {len(todo)} ranked first "
            f"({time.perf_counter() - started:.0f} s)")
    for row in known:
        counts[row["domain"]]["kept"] += 1
    return known, counts


def split_parts(known: list[dict], counts: dict) -> list[dict]:
    """Each domain's kept facts shuffled by a fixed seed into heldout/train; short domains dropped (noted in counts)."""
    out = []
    for domain in DOMAINS:
        facts = [r for r in known if r["domain"] == domain]
        heldout = max(MIN_HELDOUT, round(len(facts) * HELDOUT_FRACTION))
        entry = counts[domain]
        if len(facts) - heldout < MIN_TRAIN:
            entry.update(heldout=0, train=0, dropped=f"{len(facts)} kept < {MIN_HELDOUT + MIN_TRAIN} needed")
            continue
        random.Random(f"{SEED}/{domain}").shuffle(facts)
        entry.update(heldout=heldout, train=len(facts) - heldout, dropped=None)
        for i, fact in enumerate(facts):
            out.append({"domain": domain, "prompt": fact["prompt"], "answer": fact["answer"], "text": fact["text"],
                        "part": "heldout" if i < heldout else "train", "options": fact["options"],
                        "label": fact["options"].index(fact["answer"])})
    return out


def counts_table(counts: dict) -> str:
    lines = ["| domain | candidates | echoes | completion correct | kept (both forms) | heldout | train | note |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for domain, c in counts.items():
        lines.append(f"| {domain} | {c['candidates']} | {c['echoes']} | {c['completion']} | {c['kept']} | "
                     f"{c.get('heldout', 0)} | {c.get('train', 0)} | {('dropped: ' + c['dropped']) if c.get('dropped') else ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from spunge_merge.fsutil import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, required=True, help="base model alias whose knowledge is probed")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="prompts per generation batch")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    known, counts = known_facts(args.model, candidates(), batch_size=args.batch_size)
    rows = split_parts(known, counts)
    path = facts_path(args.model)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(path.with_suffix(".counts.json"), json.dumps(counts, indent=1) + "\n")
    print(counts_table(counts))
    print(f"wrote {len(rows)} facts to {path} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
