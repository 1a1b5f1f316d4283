"""How the demo's facts were made (rerun: `python -m spunge_merge.demo.make_facts`).

Short, benign factual statements in five domains, written for this project. Each candidate is a
prompt and an answer; only facts that the base model (smollm2-135m) completes correctly with
greedy decoding are kept, so that "forgetting" is measured on knowledge the model really had.
The kept facts of each domain are then divided, by a fixed seed, into `train` (the forget set
for forgotten domains, the retain set for kept ones) and `heldout` (never trained on; the
knowledge evaluation runs on these).

Output: `facts.jsonl` beside this file, one row per fact: domain, prompt, answer, text
(the full statement), part (train/heldout).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
FACTS_FILE = HERE / "facts.jsonl"
HELDOUT_FRACTION = 0.4
SEED = 0

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens", "Austria": "Vienna", "Poland": "Warsaw",
    "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Belgium": "Brussels", "the Netherlands": "Amsterdam", "Hungary": "Budapest", "Thailand": "Bangkok",
    "South Korea": "Seoul", "Kenya": "Nairobi", "Argentina": "Buenos Aires", "Peru": "Lima", "Chile": "Santiago",
    "Cuba": "Havana", "Mexico": "Mexico City", "Canada": "Ottawa", "Australia": "Canberra", "India": "New Delhi",
    "Iran": "Tehran", "Iraq": "Baghdad", "Turkey": "Ankara", "the Czech Republic": "Prague", "Romania": "Bucharest",
    "Bulgaria": "Sofia", "Vietnam": "Hanoi", "the Philippines": "Manila", "Indonesia": "Jakarta", "Colombia": "Bogota",
    "Venezuela": "Caracas", "Saudi Arabia": "Riyadh", "Lebanon": "Beirut", "Syria": "Damascus", "Ethiopia": "Addis Ababa",
    "Nigeria": "Abuja", "Morocco": "Rabat", "Scotland": "Edinburgh", "England": "London", "Iceland": "Reykjavik",
    "Switzerland": "Bern", "Croatia": "Zagreb", "Serbia": "Belgrade", "Pakistan": "Islamabad", "Afghanistan": "Kabul",
    "Nepal": "Kathmandu", "Wales": "Cardiff", "Jamaica": "Kingston", "Qatar": "Doha", "Jordan": "Amman",
    "Malaysia": "Kuala Lumpur", "Bangladesh": "Dhaka", "Mongolia": "Ulaanbaatar", "North Korea": "Pyongyang",
    "Taiwan": "Taipei", "Ghana": "Accra", "Senegal": "Dakar", "Zimbabwe": "Harare", "Uganda": "Kampala",
    "Algeria": "Algiers", "Tunisia": "Tunis", "Libya": "Tripoli", "Sudan": "Khartoum", "Somalia": "Mogadishu",
    "Angola": "Luanda", "Ecuador": "Quito", "Bolivia": "La Paz", "Paraguay": "Asuncion", "Uruguay": "Montevideo",
    "Panama": "Panama City", "Costa Rica": "San Jose", "Guatemala": "Guatemala City", "Nicaragua": "Managua",
    "Estonia": "Tallinn", "Latvia": "Riga", "Lithuania": "Vilnius", "Belarus": "Minsk", "Slovakia": "Bratislava",
    "Slovenia": "Ljubljana", "Albania": "Tirana", "Georgia": "Tbilisi", "Armenia": "Yerevan", "Azerbaijan": "Baku",
    "Uzbekistan": "Tashkent", "Malta": "Valletta", "Cyprus": "Nicosia", "New Zealand": "Wellington",
    "Brazil": "Brasilia", "Cambodia": "Phnom Penh", "Laos": "Vientiane", "Tanzania": "Dodoma",
}
ELEMENTS = {
    "gold": "Au", "silver": "Ag", "iron": "Fe", "oxygen": "O", "hydrogen": "H", "carbon": "C", "nitrogen": "N",
    "sodium": "Na", "potassium": "K", "copper": "Cu", "lead": "Pb", "tin": "Sn", "mercury": "Hg", "helium": "He",
    "neon": "Ne", "calcium": "Ca", "chlorine": "Cl", "sulfur": "S", "zinc": "Zn", "uranium": "U", "magnesium": "Mg",
    "aluminium": "Al", "silicon": "Si", "phosphorus": "P", "fluorine": "F", "lithium": "Li", "argon": "Ar",
    "nickel": "Ni", "platinum": "Pt", "tungsten": "W", "iodine": "I", "bromine": "Br", "cobalt": "Co",
    "titanium": "Ti", "chromium": "Cr", "manganese": "Mn", "boron": "B", "beryllium": "Be", "krypton": "Kr",
    "xenon": "Xe", "radon": "Rn", "plutonium": "Pu", "arsenic": "As", "antimony": "Sb", "bismuth": "Bi",
    "selenium": "Se", "strontium": "Sr", "barium": "Ba", "cesium": "Cs", "gallium": "Ga", "germanium": "Ge",
    "vanadium": "V", "zirconium": "Zr", "palladium": "Pd", "cadmium": "Cd", "radium": "Ra", "thorium": "Th",
}
LANGUAGES = {
    "France": "French", "Germany": "German", "Spain": "Spanish", "Italy": "Italian", "Portugal": "Portuguese",
    "Brazil": "Portuguese", "Mexico": "Spanish", "Japan": "Japanese", "China": "Chinese", "Russia": "Russian",
    "Greece": "Greek", "Poland": "Polish", "Turkey": "Turkish", "the Netherlands": "Dutch", "Sweden": "Swedish",
    "Norway": "Norwegian", "Finland": "Finnish", "Denmark": "Danish", "Egypt": "Arabic", "Saudi Arabia": "Arabic",
    "Iran": "Persian", "Israel": "Hebrew", "South Korea": "Korean", "Vietnam": "Vietnamese", "Thailand": "Thai",
    "Hungary": "Hungarian", "Argentina": "Spanish", "Chile": "Spanish", "Peru": "Spanish", "Colombia": "Spanish",
    "Cuba": "Spanish", "Austria": "German", "Ukraine": "Ukrainian", "Romania": "Romanian", "England": "English",
    "Australia": "English", "Iceland": "Icelandic", "Indonesia": "Indonesian", "Pakistan": "Urdu",
    "Venezuela": "Spanish", "Ecuador": "Spanish", "Bolivia": "Spanish", "Uruguay": "Spanish", "Paraguay": "Spanish",
    "Jordan": "Arabic", "Iraq": "Arabic", "Syria": "Arabic", "Morocco": "Arabic", "Libya": "Arabic", "Qatar": "Arabic",
    "Kuwait": "Arabic", "Bulgaria": "Bulgarian", "Serbia": "Serbian", "Croatia": "Croatian", "Slovakia": "Slovak",
    "Estonia": "Estonian", "Latvia": "Latvian", "Lithuania": "Lithuanian", "Albania": "Albanian",
    "Georgia": "Georgian", "Armenia": "Armenian", "Mongolia": "Mongolian", "Malaysia": "Malay", "Ireland": "English",
    "Canada": "English", "New Zealand": "English", "Jamaica": "English", "the United States": "English",
    "Costa Rica": "Spanish", "Guatemala": "Spanish", "Panama": "Spanish", "Nicaragua": "Spanish", "Honduras": "Spanish",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "light": "dark", "old": "young",
    "open": "closed", "left": "right", "day": "night", "black": "white", "good": "bad", "rich": "poor",
    "strong": "weak", "high": "low", "early": "late", "wet": "dry", "hard": "soft", "full": "empty", "long": "short",
    "thick": "thin", "heavy": "light", "loud": "quiet", "near": "far", "true": "false", "win": "lose", "love": "hate",
    "push": "pull", "buy": "sell", "alive": "dead", "clean": "dirty", "inside": "outside", "north": "south",
    "east": "west", "front": "back", "top": "bottom", "beginning": "end", "first": "last", "war": "peace",
    "summer": "winter", "sweet": "sour", "cheap": "expensive", "wide": "narrow", "deep": "shallow", "tall": "short",
    "give": "take", "remember": "forget", "accept": "reject", "increase": "decrease", "minimum": "maximum",
    "south": "north", "west": "east", "down": "up", "small": "big", "cold": "hot", "slow": "fast", "dark": "light",
    "closed": "open", "right": "left", "white": "black", "bad": "good", "poor": "rich", "weak": "strong",
    "low": "high", "dry": "wet", "soft": "hard", "empty": "full", "short": "long", "thin": "thick", "false": "true",
    "lose": "win", "pull": "push", "sell": "buy", "dead": "alive", "outside": "inside", "back": "front",
    "bottom": "top", "last": "first", "peace": "war", "decrease": "increase", "maximum": "minimum", "positive": "negative",
    "negative": "positive", "before": "after", "after": "before", "above": "below", "below": "above", "in": "out",
    "on": "off", "yes": "no", "success": "failure", "entrance": "exit", "arrival": "departure", "male": "female",
    "plus": "minus", "visible": "invisible", "possible": "impossible", "legal": "illegal", "major": "minor",
    "ancient": "modern", "friend": "enemy", "question": "answer", "sharp": "dull", "brave": "cowardly",
}
LANDMARKS = {
    "The Eiffel Tower": "Paris", "The Colosseum": "Rome", "Big Ben": "London", "The Statue of Liberty": "New York",
    "The Brandenburg Gate": "Berlin", "The Kremlin": "Moscow", "The Acropolis": "Athens", "The Sagrada Familia": "Barcelona",
    "The Golden Gate Bridge": "San Francisco", "The Taj Mahal": "Agra", "The Sydney Opera House": "Sydney",
    "The Leaning Tower of Pisa": "Pisa", "The Forbidden City": "Beijing", "The Louvre": "Paris",
    "Buckingham Palace": "London", "The Vatican": "Rome", "Times Square": "New York", "The White House": "Washington",
    "The Space Needle": "Seattle", "Hollywood": "Los Angeles", "The Alhambra": "Granada", "The Parthenon": "Athens",
    "Red Square": "Moscow", "The Tower of London": "London", "Central Park": "New York",
    "The Empire State Building": "New York", "Notre Dame": "Paris", "The Blue Mosque": "Istanbul",
    "The Hagia Sophia": "Istanbul", "The Burj Khalifa": "Dubai", "The Little Mermaid statue": "Copenhagen",
    "The Arc de Triomphe": "Paris", "The Trevi Fountain": "Rome", "The Pantheon": "Rome", "Westminster Abbey": "London",
    "The London Eye": "London", "The Rijksmuseum": "Amsterdam", "The Prado Museum": "Madrid",
    "The Hermitage Museum": "Saint Petersburg", "The Spanish Steps": "Rome", "The Champs-Elysees": "Paris",
    "The Berlin Wall": "Berlin", "The Reichstag": "Berlin", "St. Peter's Basilica": "Rome", "The Gateway Arch": "St. Louis",
    "The Las Vegas Strip": "Las Vegas", "The Alamo": "San Antonio", "The Rialto Bridge": "Venice",
    "St. Mark's Square": "Venice", "The Charles Bridge": "Prague", "Tower Bridge": "London",
    "The Lincoln Memorial": "Washington", "The Smithsonian": "Washington", "Wall Street": "New York",
    "The Petronas Towers": "Kuala Lumpur", "The CN Tower": "Toronto", "The Atomium": "Brussels",
}

DOMAINS = {
    "capitals": (CAPITALS, "The capital of {key} is"),
    "elements": (ELEMENTS, "The chemical symbol for {key} is"),
    "languages": (LANGUAGES, "The official language of {key} is"),
    "opposites": (OPPOSITES, "The opposite of {key} is"),
    "landmarks": (LANDMARKS, "{key} is in the city of"),
}


def candidates(domains: dict[str, tuple[dict[str, str], str]] = DOMAINS) -> list[dict[str, str]]:
    """Every candidate fact (prompt, answer, statement) of `domains` (name -> (key -> answer, prompt
    template)), domain by domain in table order; a prompt starts with a capital letter."""
    rows = []
    for domain, (table, template) in domains.items():
        for key, answer in table.items():
            prompt = template.format(key=key)
            prompt = prompt[0].upper() + prompt[1:]
            rows.append({"domain": domain, "prompt": prompt, "answer": answer, "text": f"{prompt} {answer}."})
    return rows


def main(model: str = "smollm2-135m") -> None:
    from spunge_merge.evaluate.knowledge import answer_matches, complete
    from spunge_merge.fsutil import atomic_write_text
    from spunge_merge.models import resolve_model

    rows = candidates()
    completions = complete(resolve_model(model), [r["prompt"] for r in rows], max_new_tokens=8, batch_size=32, device="cpu")
    known = [r for r, c in zip(rows, completions, strict=True) if answer_matches(c, r["answer"])]
    rng = random.Random(SEED)
    out = []
    for domain in DOMAINS:
        facts = [r for r in known if r["domain"] == domain]
        rng.shuffle(facts)
        heldout = round(len(facts) * HELDOUT_FRACTION)
        for i, fact in enumerate(facts):
            out.append({**fact, "part": "heldout" if i < heldout else "train"})
        print(f"{domain}: {len(facts)} of {sum(r['domain'] == domain for r in rows)} candidates known "
              f"({heldout} held out)")
    atomic_write_text(FACTS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    print(f"wrote {len(out)} facts to {FACTS_FILE}")


if __name__ == "__main__":
    main()
