"""Vocabularies of the synthetic demo corpus: invented, clinically plausible, no real notes.

Kept apart from the templates so either can grow alone. No entry contains ". " followed by
a capital, so a sentence splitter never cuts an entity in two.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

ValueFn = Callable[[random.Random], str]


def _num(low: float, high: float, decimals: int, fmt: str) -> ValueFn:
    """A value drawn uniformly from [low, high], rounded, written with ``fmt``."""

    def draw(rng: random.Random) -> str:
        return fmt.format(f"{rng.uniform(low, high):.{decimals}f}")

    return draw


def _bp(rng: random.Random) -> str:
    return f"{rng.randint(92, 188)}/{rng.randint(54, 104)} mmHg"


@dataclass(frozen=True)
class LabTest:
    names: tuple[str, ...]  # spellings of one test, the first the most formal
    value: ValueFn


@dataclass(frozen=True)
class Imaging:
    names: tuple[str, ...]
    findings: tuple[str, ...]  # problems this study can show


@dataclass(frozen=True)
class Drug:
    name: str
    doses: tuple[str, ...]
    forms: tuple[str, ...]
    routes: tuple[str, ...]
    indications: tuple[str, ...]
    prn: bool = False  # also taken "as needed" for its indications

    def routes_for(self, form: str) -> tuple[str, ...]:
        """The drug's routes that suit ``form``, so "injection orally" never appears."""
        suited = tuple(r for r in self.routes if r in FORM_ROUTES.get(form, ()))
        return suited or self.routes


# Symptoms and acute complaints: what a patient presents with or denies.
SYMPTOMS: tuple[str, ...] = (
    "chest pain", "shortness of breath", "fever", "chills", "cough", "nausea", "vomiting",
    "abdominal pain", "headache", "dizziness", "palpitations", "fatigue", "night sweats",
    "diarrhea", "constipation", "back pain", "lower extremity edema", "wheezing",
    "hematuria", "melena", "weight loss", "syncope", "dysuria", "blurred vision",
    "joint pain", "orthopnea", "hemoptysis", "confusion", "rash", "sore throat",
)

# Chronic and acute diagnoses: what a problem list holds and a drug is given for.
DISEASES: tuple[str, ...] = (
    "hypertension", "type 2 diabetes", "atrial fibrillation", "congestive heart failure",
    "chronic kidney disease", "pneumonia", "urinary tract infection", "cellulitis",
    "COPD", "asthma", "deep vein thrombosis", "pulmonary embolism", "hyperlipidemia",
    "hypothyroidism", "iron deficiency anemia", "gout", "osteoarthritis",
    "major depressive disorder", "generalized anxiety disorder", "GERD",
    "acute kidney injury", "sepsis", "hyponatremia", "hypokalemia", "coronary artery disease",
    "obstructive sleep apnea", "peripheral neuropathy", "migraine", "cirrhosis",
    "acute pancreatitis", "benign prostatic hyperplasia", "osteoporosis", "psoriasis",
    "ischemic stroke", "seizure disorder", "aortic stenosis", "diverticulitis",
)

SYMPTOM_SEVERITIES: tuple[str, ...] = (
    "mild", "moderate", "severe", "intermittent", "significant", "worsening", "new-onset",
)

# (disease, the severity words it reads naturally with), kept as pairs so that
# "stage 3 hypertension" never appears.
STAGED_DISEASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("chronic kidney disease", ("stage 3", "stage 2", "end-stage")),
    ("CKD", ("stage 3", "stage 2")),
    ("congestive heart failure", ("class III", "severe", "moderate")),
    ("aortic stenosis", ("mild", "moderate", "severe", "critical")),
    ("mitral regurgitation", ("mild", "moderate", "severe", "moderate to severe")),
    ("asthma", ("mild intermittent", "moderate", "severe")),
    ("COPD", ("moderate", "severe", "end-stage")),
    ("hypertension", ("uncontrolled", "mild", "severe")),
    ("type 2 diabetes", ("uncontrolled",)),
    ("osteoarthritis", ("mild", "moderate", "severe")),
    ("major depressive disorder", ("mild", "moderate", "severe")),
    ("hepatic encephalopathy", ("grade 2", "mild")),
    ("iron deficiency anemia", ("mild", "moderate", "severe")),
    ("sleep apnea", ("mild", "moderate", "severe")),
    ("hypertensive retinopathy", ("grade 2", "mild")),
)

LAB_TESTS: tuple[LabTest, ...] = (
    LabTest(("hemoglobin", "Hgb"), _num(6.8, 15.9, 1, "{} g/dL")),
    LabTest(("white blood cell count", "WBC"), _num(2.1, 21.5, 1, "{} K/uL")),
    LabTest(("platelet count", "platelets"), _num(48, 420, 0, "{} K/uL")),
    LabTest(("sodium", "Na"), _num(121, 148, 0, "{} mmol/L")),
    LabTest(("potassium", "K"), _num(2.8, 6.1, 1, "{} mmol/L")),
    LabTest(("creatinine", "Cr"), _num(0.6, 4.8, 1, "{} mg/dL")),
    LabTest(("blood urea nitrogen", "BUN"), _num(8, 78, 0, "{} mg/dL")),
    LabTest(("glucose", "blood glucose"), _num(62, 412, 0, "{} mg/dL")),
    LabTest(("HbA1c", "hemoglobin A1c"), _num(5.4, 11.8, 1, "{}%")),
    LabTest(("troponin", "troponin I"), _num(0.01, 2.4, 2, "{} ng/mL")),
    LabTest(("BNP", "brain natriuretic peptide"), _num(40, 2400, 0, "{} pg/mL")),
    LabTest(("INR",), _num(0.9, 4.2, 1, "{}")),
    LabTest(("TSH",), _num(0.1, 12.5, 1, "{} mIU/L")),
    LabTest(("LDL cholesterol", "LDL"), _num(58, 212, 0, "{} mg/dL")),
    LabTest(("lactate", "lactic acid"), _num(0.8, 6.4, 1, "{} mmol/L")),
    LabTest(("ALT",), _num(12, 340, 0, "{} U/L")),
    LabTest(("AST",), _num(14, 290, 0, "{} U/L")),
    LabTest(("lipase",), _num(18, 1450, 0, "{} U/L")),
    LabTest(("C-reactive protein", "CRP"), _num(1, 180, 0, "{} mg/L")),
    LabTest(("ferritin",), _num(6, 890, 0, "{} ng/mL")),
    LabTest(("magnesium", "Mg"), _num(1.2, 2.6, 1, "{} mg/dL")),
    LabTest(("blood pressure", "BP"), _bp),
    LabTest(("heart rate", "pulse"), _num(48, 138, 0, "{} bpm")),
    LabTest(("oxygen saturation", "SpO2"), _num(84, 99, 0, "{}%")),
    LabTest(("temperature",), _num(36.1, 39.8, 1, "{} C")),
    LabTest(("ejection fraction", "LVEF"), _num(15, 65, 0, "{}%")),
    LabTest(("eGFR",), _num(14, 95, 0, "{} mL/min")),
    LabTest(("uric acid",), _num(3.1, 11.4, 1, "{} mg/dL")),
    LabTest(("albumin",), _num(1.9, 4.8, 1, "{} g/dL")),
)

# (disease, first name of a LabTest that follows it), so problem lists read coherently.
DISEASE_TESTS: tuple[tuple[str, str], ...] = (
    ("type 2 diabetes", "HbA1c"), ("type 2 diabetes", "glucose"),
    ("chronic kidney disease", "creatinine"), ("CKD", "eGFR"),
    ("acute kidney injury", "creatinine"), ("congestive heart failure", "BNP"),
    ("congestive heart failure", "ejection fraction"), ("hypothyroidism", "TSH"),
    ("hyperlipidemia", "LDL cholesterol"), ("iron deficiency anemia", "hemoglobin"),
    ("iron deficiency anemia", "ferritin"), ("hypertension", "blood pressure"),
    ("atrial fibrillation", "heart rate"), ("atrial fibrillation", "INR"),
    ("hyponatremia", "sodium"), ("hypokalemia", "potassium"), ("acute pancreatitis", "lipase"),
    ("cirrhosis", "INR"), ("cirrhosis", "albumin"), ("sepsis", "lactate"),
    ("pneumonia", "white blood cell count"), ("COPD", "oxygen saturation"),
    ("gout", "uric acid"), ("coronary artery disease", "troponin"),
    ("hypomagnesemia", "magnesium"), ("thrombocytopenia", "platelet count"),
)

# Words that stand for a value without a number; some notes use them instead.
QUALITATIVE_VALUES: tuple[str, ...] = ("normal", "elevated", "low", "within normal limits")

IMAGING: tuple[Imaging, ...] = (
    Imaging(("ECG", "EKG", "electrocardiogram"),
            ("ST elevation in the inferior leads", "sinus tachycardia", "atrial fibrillation",
             "left bundle branch block", "T wave inversions")),
    Imaging(("chest X-ray", "chest radiograph"),
            ("right lower lobe infiltrate", "pleural effusion", "cardiomegaly",
             "pulmonary edema", "left lower lobe consolidation")),
    Imaging(("CT of the abdomen", "abdominal CT"),
            ("small bowel obstruction", "acute appendicitis", "diverticulitis",
             "nephrolithiasis", "free fluid")),
    Imaging(("CT of the head", "head CT"),
            ("subdural hematoma", "acute infarct", "chronic small vessel disease")),
    Imaging(("MRI of the brain", "brain MRI"),
            ("acute infarct", "white matter lesions", "pituitary adenoma")),
    Imaging(("echocardiogram", "transthoracic echocardiogram"),
            ("reduced ejection fraction", "aortic stenosis", "pericardial effusion",
             "left ventricular hypertrophy")),
    Imaging(("abdominal ultrasound", "right upper quadrant ultrasound"),
            ("gallstones", "acute cholecystitis", "hepatic steatosis")),
    Imaging(("CT angiogram of the chest", "CT pulmonary angiogram"),
            ("pulmonary embolism", "bilateral pulmonary emboli")),
    Imaging(("urinalysis",), ("pyuria", "proteinuria", "bacteriuria")),
    Imaging(("lower extremity duplex", "venous duplex"), ("deep vein thrombosis",)),
    Imaging(("colonoscopy",), ("sessile polyp", "internal hemorrhoids")),
    Imaging(("stress test", "nuclear stress test"), ("inducible ischemia",)),
    Imaging(("blood cultures",), ("gram-positive cocci", "bacteremia")),
)

TREATMENTS: tuple[str, ...] = (
    "cardiac catheterization", "percutaneous coronary intervention",
    "coronary artery bypass grafting", "hemodialysis", "physical therapy", "appendectomy",
    "laparoscopic cholecystectomy", "intubation", "mechanical ventilation",
    "blood transfusion", "thoracentesis", "paracentesis", "radiation therapy",
    "total knee replacement", "incision and drainage", "electrical cardioversion",
    "pacemaker placement", "supplemental oxygen", "IV fluids", "wound care",
    "BiPAP", "endoscopic banding", "occupational therapy", "chemotherapy",
)

ORAL = ("PO", "by mouth", "orally")
_ORAL_FORMS = ("tablet", "tablets", "capsule", "capsules", "chewable tablet",
               "extended-release tablet", "suspension", "solution",
               "orally disintegrating tablet")
FORM_ROUTES: dict[str, tuple[str, ...]] = {
    **{form: ORAL for form in _ORAL_FORMS},
    "injection": ("IV", "intravenously", "subcutaneously", "SC", "IM"),
    "pen": ("subcutaneously", "SC"),
    "prefilled syringe": ("subcutaneously", "SC"),
    "inhaler": ("inhaled",),
    "nebulizer solution": ("inhaled",),
    "nasal spray": ("intranasally",),
    "sublingual tablet": ("sublingually",),
    "patch": ("transdermally",),
    "suppository": ("rectally",),
}
TAB = ("tablet", "tablets")
CAP = ("capsule", "capsules")
IV = ("IV", "intravenously")
SUBQ = ("subcutaneously", "SC")

DRUGS: tuple[Drug, ...] = (
    Drug("aspirin", ("81 mg", "325 mg"), TAB + ("chewable tablet",), ORAL,
         ("coronary artery disease", "chest pain")),
    Drug("metoprolol tartrate", ("25 mg", "50 mg", "12.5 mg"), TAB, ORAL,
         ("hypertension", "atrial fibrillation")),
    Drug("metoprolol succinate", ("50 mg", "100 mg"), ("extended-release tablet",), ORAL,
         ("congestive heart failure", "hypertension")),
    Drug("lisinopril", ("10 mg", "20 mg", "5 mg", "40 mg"), TAB, ORAL,
         ("hypertension", "congestive heart failure")),
    Drug("atorvastatin", ("40 mg", "80 mg", "20 mg"), TAB, ORAL,
         ("hyperlipidemia", "coronary artery disease")),
    Drug("metformin", ("500 mg", "1000 mg", "850 mg"), TAB + ("extended-release tablet",),
         ORAL, ("type 2 diabetes", "diabetes")),
    Drug("insulin glargine", ("20 units", "10 units", "34 units"), ("injection", "pen"), SUBQ,
         ("type 2 diabetes", "diabetes")),
    Drug("insulin lispro", ("4 units", "6 units", "8 units"), ("injection", "pen"), SUBQ,
         ("type 2 diabetes", "hyperglycemia")),
    Drug("furosemide", ("40 mg", "20 mg", "80 mg"), TAB + ("injection",), ORAL + IV,
         ("congestive heart failure", "lower extremity edema")),
    Drug("amlodipine", ("5 mg", "10 mg", "2.5 mg"), TAB, ORAL, ("hypertension",)),
    Drug("warfarin", ("5 mg", "2.5 mg", "3 mg"), TAB, ORAL,
         ("atrial fibrillation", "deep vein thrombosis")),
    Drug("apixaban", ("5 mg", "2.5 mg"), TAB, ORAL,
         ("atrial fibrillation", "pulmonary embolism")),
    Drug("heparin", ("5000 units",), ("injection",), SUBQ + IV,
         ("DVT prophylaxis", "pulmonary embolism")),
    Drug("enoxaparin", ("40 mg", "1 mg/kg"), ("injection", "prefilled syringe"), SUBQ,
         ("DVT prophylaxis", "deep vein thrombosis")),
    Drug("levothyroxine", ("50 mcg", "75 mcg", "100 mcg"), TAB, ORAL, ("hypothyroidism",)),
    Drug("omeprazole", ("20 mg", "40 mg"), CAP, ORAL, ("GERD", "dyspepsia")),
    Drug("pantoprazole", ("40 mg",), TAB + ("injection",), ORAL + IV,
         ("GERD", "gastrointestinal bleeding")),
    Drug("albuterol", ("2 puffs", "1 to 2 puffs"), ("inhaler",), ("inhaled",),
         ("wheezing", "shortness of breath"), prn=True),
    Drug("ipratropium-albuterol", ("3 mL",), ("nebulizer solution",), ("inhaled",),
         ("COPD", "wheezing")),
    Drug("fluticasone", ("2 sprays", "1 spray"), ("nasal spray",), ("intranasally",),
         ("allergic rhinitis",)),
    Drug("prednisone", ("40 mg", "20 mg", "10 mg"), TAB, ORAL,
         ("COPD", "asthma", "gout")),
    Drug("ceftriaxone", ("1 g", "2 g"), ("injection",), IV + ("IM",),
         ("pneumonia", "urinary tract infection")),
    Drug("vancomycin", ("1 g", "1250 mg"), ("injection",), IV,
         ("cellulitis", "sepsis")),
    Drug("azithromycin", ("500 mg", "250 mg"), TAB, ORAL + IV, ("pneumonia",)),
    Drug("amoxicillin", ("500 mg", "875 mg"), CAP + ("suspension",), ORAL,
         ("sinusitis", "otitis media")),
    Drug("ciprofloxacin", ("500 mg", "250 mg"), TAB, ORAL, ("urinary tract infection",)),
    Drug("nitrofurantoin", ("100 mg",), CAP, ORAL, ("urinary tract infection",)),
    Drug("acetaminophen", ("650 mg", "500 mg", "1 g"), TAB + ("suppository",),
         ORAL + ("rectally",), ("pain", "fever", "headache"), prn=True),
    Drug("ibuprofen", ("400 mg", "600 mg"), TAB, ORAL, ("pain", "joint pain"), prn=True),
    Drug("oxycodone", ("5 mg", "10 mg"), TAB, ORAL, ("pain", "back pain"), prn=True),
    Drug("morphine", ("2 mg", "4 mg"), ("injection",), IV, ("pain", "chest pain"), prn=True),
    Drug("gabapentin", ("300 mg", "100 mg", "600 mg"), CAP, ORAL,
         ("peripheral neuropathy", "neuropathic pain")),
    Drug("sertraline", ("50 mg", "100 mg"), TAB, ORAL,
         ("major depressive disorder", "generalized anxiety disorder")),
    Drug("hydrochlorothiazide", ("25 mg", "12.5 mg"), TAB, ORAL, ("hypertension",)),
    Drug("clopidogrel", ("75 mg",), TAB, ORAL, ("coronary artery disease", "ischemic stroke")),
    Drug("losartan", ("50 mg", "25 mg", "100 mg"), TAB, ORAL, ("hypertension",)),
    Drug("ondansetron", ("4 mg", "8 mg"), TAB + ("orally disintegrating tablet", "injection"),
         ORAL + IV, ("nausea", "vomiting"), prn=True),
    Drug("potassium chloride", ("20 mEq", "40 mEq"), ("extended-release tablet", "solution"),
         ORAL, ("hypokalemia",)),
    Drug("allopurinol", ("100 mg", "300 mg"), TAB, ORAL, ("gout",)),
    Drug("tamsulosin", ("0.4 mg",), CAP, ORAL, ("benign prostatic hyperplasia",)),
    Drug("nitroglycerin", ("0.4 mg",), ("sublingual tablet", "patch"),
         ("sublingually", "transdermally"), ("chest pain", "angina"), prn=True),
    Drug("lorazepam", ("0.5 mg", "1 mg"), TAB + ("injection",), ORAL + IV,
         ("anxiety", "seizure"), prn=True),
    Drug("docusate", ("100 mg",), CAP, ORAL, ("constipation",), prn=True),
)

FREQUENCIES: tuple[str, ...] = (
    "daily", "once daily", "twice daily", "three times daily", "BID", "TID", "QID",
    "every 8 hours", "every 12 hours", "every 6 hours", "q6h", "q8h", "at bedtime", "QHS",
    "every morning", "weekly", "every other day", "with meals", "four times daily",
)

# Frequencies that only make sense with "for <symptom>" after them.
PRN_FREQUENCIES: tuple[str, ...] = (
    "as needed", "PRN", "every 4 hours as needed", "every 6 hours as needed", "q4h PRN",
)

DURATIONS: tuple[str, ...] = (
    "7 days", "10 days", "5 days", "14 days", "2 weeks", "3 weeks", "6 weeks", "3 months",
    "1 month", "seven days", "five days", "4 weeks", "3 days",
)

# Points and spans in time; "temporal" in the common schema.
TIMES: tuple[str, ...] = (
    "2 days ago", "yesterday", "last week", "this morning", "3 weeks ago", "last night",
    "two months ago", "earlier today", "over the past week", "since last month",
)
DATES: tuple[str, ...] = (
    "2015", "2018", "2019", "2021", "March 2022", "June 2020", "January 2023",
    "03/12/2024", "11/02/2023", "08/27/2024", "last year", "childhood", "October 2021",
)

AGES: tuple[int, int] = (19, 94)

SEXES: tuple[tuple[str, str, str], ...] = (
    ("man", "He", "his"),
    ("woman", "She", "her"),
)

CONTROL_WORDS: tuple[str, ...] = (
    "poorly controlled", "well controlled", "stable", "improving", "worsening",
    "at goal", "not at goal", "unchanged",
)
