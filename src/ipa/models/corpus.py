"""Text inputs for the text pipelines, written for this project (no download, no third-party corpus).

Lengths follow what IPA feeds its pipelines: `ENGLISH` paragraphs of about 230 words (IPA's sum-qa sample
is a 1,600-character paragraph) for summarisation; `FRENCH` passages of 45-55 words for the nlp pipeline
(IPA's sample is a 1,400-character paragraph: translating all of it with a capped decoder takes 10-15 s
per request on a 2-core CPU, so the passages are a few sentences and the translation cap fits them);
`QA_CONTEXT` is the fixed context question-answering stages read, as IPA's QA nodes read theirs.
"""

from __future__ import annotations

ENGLISH = (
    "The city council met on Tuesday evening to discuss the future of the old railway depot on the east side "
    "of town. The building has stood empty for almost twenty years, and residents have asked for years that it "
    "be turned into something useful. Three proposals were presented. The first would convert the depot into a "
    "covered market with space for about sixty stalls, run by a cooperative of local farmers and bakers. The "
    "second would demolish most of the structure and build affordable housing, keeping only the clock tower as "
    "a reminder of the site's history. The third, backed by the regional museum, would restore the main hall "
    "and use it to display locomotives and carriages that are now stored in a warehouse outside the city. "
    "Council members agreed that the depot cannot stay as it is: the roof leaks, part of the north wall has "
    "collapsed, and the site attracts vandalism. Estimates of the cost of each plan vary widely, from four to "
    "eleven million, and several members asked for an independent review before any vote. A public "
    "consultation will open next month, with meetings in each district and an online survey. The mayor said "
    "she hoped a decision could be taken before the end of the year, so that work could begin in the spring.",

    "Researchers at the coastal institute have spent three summers counting seabirds on a chain of small "
    "islands north of the bay, and their first results were published this week. The number of nesting pairs "
    "of puffins fell by almost a third between the first and the last season, while the population of gulls "
    "stayed roughly the same. The team believes that warmer water has pushed the small fish that puffins feed "
    "on further from the coast, forcing the parents to fly longer distances to bring food back to their chicks. "
    "Chicks that were weighed at the end of each season were lighter in the warmer years, which supports that "
    "explanation. The researchers also fitted small tracking devices to forty adult birds and found that some "
    "of them travelled more than eighty kilometres in a single trip. Fishing boats were not found to compete "
    "directly with the birds, because the fleet targets larger species in deeper water. The authors caution "
    "that three years is a short period and that seabird numbers naturally rise and fall. They plan to continue "
    "the survey for at least five more seasons, and they have asked volunteers from nearby villages to help "
    "with counts on the islands that are hardest to reach by boat.",

    "A small company in the hills above the valley has started producing paper from the stalks left over after "
    "the grain harvest. For generations, farmers in the area burned the stalks in their fields each autumn, "
    "which filled the valley with smoke for weeks and worried doctors at the regional hospital. The company "
    "buys the stalks directly from the farms, presses them into bales, and soaks them in a mild solution "
    "before turning them into pulp. Its founder, who trained as a chemical engineer, says that the process "
    "uses about half as much water as making paper from wood and needs no chlorine to whiten the sheets. The "
    "paper is slightly rougher than ordinary office paper, and at first most customers were artists and "
    "printers of wedding invitations. Last year, however, a supermarket chain began using it for its bags, "
    "and orders tripled. The company now employs thirty people and plans to open a second mill next year. "
    "Farmers say that selling the stalks adds a modest amount to their income, but that the bigger change is "
    "in the air: the autumn smoke has almost disappeared, and the hospital reports fewer visits from patients "
    "with breathing problems during the harvest season.",

    "The national library has finished a project that took eight years: scanning every newspaper printed in "
    "the country between the end of the eighteenth century and the middle of the twentieth. More than twelve "
    "million pages are now available to anyone with a computer, and the text of each page can be searched. "
    "Historians say the collection will change how they work. Until now, a researcher who wanted to know how "
    "a flood, an election or a new law was reported in different towns had to travel from archive to archive "
    "and read fragile pages by hand. The scanning was difficult because many of the oldest papers were printed "
    "on cheap paper that had turned brown and brittle, and some had been damaged by damp or by insects. "
    "Volunteers spent thousands of hours correcting the automatic transcription of the text, especially for "
    "pages printed in old typefaces. The library has also added maps that show where each newspaper was "
    "published and how far it was distributed. The director said the next step would be to add local "
    "magazines and the records of trade unions and sports clubs, which tell the story of daily life in a way "
    "that national newspapers rarely did.",
)

FRENCH = (
    "Le conseil municipal s'est réuni mardi soir pour discuter de l'avenir de l'ancien dépôt ferroviaire. "
    "Le bâtiment est vide depuis presque vingt ans et les habitants demandent depuis longtemps qu'il soit "
    "transformé en marché couvert, en logements ou en musée. Une consultation publique ouvrira le mois prochain.",

    "Des chercheurs ont compté les oiseaux marins sur de petites îles au nord de la baie pendant trois étés. "
    "Le nombre de couples de macareux a baissé de près d'un tiers, sans doute parce que l'eau plus chaude "
    "éloigne de la côte les petits poissons dont ils nourrissent leurs poussins.",

    "Une petite entreprise installée dans les collines fabrique du papier avec les tiges qui restent après la "
    "moisson. Autrefois, les agriculteurs brûlaient ces tiges chaque automne et la fumée remplissait la vallée "
    "pendant des semaines. Le procédé utilise deux fois moins d'eau que le papier de bois.",

    "La bibliothèque nationale a terminé la numérisation de tous les journaux imprimés dans le pays pendant "
    "cent cinquante ans. Plus de douze millions de pages peuvent maintenant être consultées et fouillées par "
    "n'importe qui, ce qui changera la manière dont les historiens travaillent.",

    "Le nouveau tramway reliera la gare au campus universitaire en moins de vingt minutes. Les travaux "
    "commenceront au printemps et dureront deux ans. Les commerçants du centre craignent une baisse de leur "
    "chiffre d'affaires pendant le chantier et demandent des compensations à la ville.",

    "Après un hiver très sec, les agriculteurs de la région s'inquiètent pour leurs récoltes. Les réserves "
    "d'eau sont au plus bas depuis dix ans et la préfecture a déjà limité l'arrosage des jardins. Des "
    "restrictions plus sévères pourraient être décidées si la pluie ne revient pas avant l'été.",
)

QA_CONTEXT = (
    "The old railway depot on the east side of the city closed in the spring of two thousand and four, when the "
    "last freight line was moved to the new station by the river. Since then the building has stood empty. The "
    "city council is now considering three plans for it: a covered market run by local farmers, affordable "
    "housing that would keep only the clock tower, or a railway museum in the restored main hall. The cost of "
    "the plans ranges from four to eleven million. Residents will be consulted next month, and the mayor hopes "
    "that the council will decide before the end of the year so that work can begin in the spring."
)

SPEECH_TRANSCRIPT = ("mister quilter is the apostle of the middle classes and we are glad to welcome his gospel")
"""The LibriSpeech clip's transcript (../shared/data/speech/README.md): words for decoding, not an input."""
