#!/usr/bin/env python3
"""Writes the EPaCCS conformance resources (StructureDefinitions, ValueSets, CodeSystems) into
profiles/. Run from the repository root: python3 profiles/tools/generate.py

Each profile's differential lists the constrained elements; its snapshot repeats them with the
base element's path (a partial snapshot: base elements without constraints are not listed).
The extension `applies-when` (`<path> in <ValueSet url>`) tells the server which resources the
profile applies to even when they do not claim it in meta.profile.
"""
import json, os

BASE = "https://fhir.epaccs.nhs.example"
SCT = "http://snomed.info/sct"
LOCAL = f"{BASE}/CodeSystem/epaccs-observables"
ROLE = f"{BASE}/CodeSystem/sharing-role"
APPLIES = f"{BASE}/StructureDefinition/applies-when"
REVIEW = f"{BASE}/StructureDefinition/planned-review-date"
BOX = f"{BASE}/StructureDefinition/anticipatory-medicines-location"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

def vs(id_, title, concepts, system=SCT):
    return {"resourceType": "ValueSet", "id": id_, "url": f"{BASE}/ValueSet/{id_}", "version": "0.1.0",
            "name": id_.replace("-", "_"), "title": title, "status": "active",
            "compose": {"include": [{"system": system, "concept": [{"code": c, "display": d} for c, d in concepts]}]}}

valuesets = [
    vs("consent-to-share", "Consent to share the EoL care coordination record (SCCI1580 item 1)", [
        ("882921000000109", "Consent given for sharing end of life care coordination record"),
        ("882941000000102", "Withdrawal of consent for sharing end of life care coordination record"),
        ("882961000000101", "Best interests decision taken (Mental Capacity Act 2005) for sharing"),
        ("883001000000106", "Consent given by appointed person with lasting power of attorney for personal welfare")]),
    vs("cpr-decision", "CPR decision", [("450475007", "For attempted cardiopulmonary resuscitation"), ("450476008", "Not for attempted cardiopulmonary resuscitation")]),
    vs("respect-form", "ReSPECT form", [("1382601000000107", "ReSPECT form")]),
    vs("eol-care-plan", "End of life and advance care plans", [("736373009", "End of life care plan"), ("736366004", "Advance care plan")]),
    vs("preferred-place", "Preferred place of care or death", [
        ("110481000000108", "Home"), ("108401000000102", "Hospice"), ("109401000000108", "Hospital"),
        ("89751000000108", "Community hospital"), ("89761000000106", "Nursing home"),
        ("512071000000106", "Residential home"), ("819211000000102", "Usual place of residence")]),
    vs("preference-not-recorded", "Reason preferred place not recorded", [
        ("517111000000103", "Unable to express preference"), ("517131000000106", "Discussion not appropriate"),
        ("766391000000108", "Declined discussion"), ("517161000000101", "Undecided")]),
    vs("actual-place-of-death", "Actual place of death", [
        ("876879006", "Died at home"), ("876882001", "Died in hospice"), ("183676005", "Died in hospital"),
        ("876884000", "Died in nursing home"), ("1325731000000106", "Died in residential home"),
        ("713049009", "Died in community hospital"), ("714342001", "Died in ambulance")]),
    vs("prognosis", "Prognosis", [
        ("511401000000102", "Last days of life"), ("955231000000109", "Last weeks of life"), ("968211000000101", "Last months of life"),
        ("767503006", "About a year"), ("1413121000000106", "More than a year")]),
    vs("advance-decision", "Advance decisions and lasting power of attorney", [
        ("816281000000101", "Has advance statement"), ("816301000000100", "Has advance decision to refuse treatment"),
        ("816321000000109", "Has ADRT to refuse life-sustaining treatment"),
        ("816361000000101", "Has appointed person with personal welfare LPA"),
        ("816381000000105", "Has appointed person with LPA with authority for life-sustaining decisions")]),
    vs("lpa", "Lasting power of attorney for health and welfare", [
        ("816361000000101", "Has appointed person with personal welfare LPA"),
        ("816381000000105", "Has appointed person with LPA with authority for life-sustaining decisions")]),
    vs("anticipatory-medicines", "Anticipatory medicines", [
        ("376201000000102", "Issue of palliative care anticipatory medication box"), ("871021000000106", "Prescription of anticipatory medication")]),
    vs("akps", "Australia-modified Karnofsky Performance Status", [("901671000000100", "AKPS score")]),
    vs("epaccs-observables", "EPaCCS observables", [
        ("preferred-place-of-care", "Preferred place of care"), ("preferred-place-of-death", "Preferred place of death"),
        ("actual-place-of-death", "Actual place of death")], system=LOCAL),
    vs("preferred-place-observables", "Preferred place observables", [
        ("preferred-place-of-care", "Preferred place of care"), ("preferred-place-of-death", "Preferred place of death")], system=LOCAL),
    vs("actual-place-observable", "Actual place of death observable", [("actual-place-of-death", "Actual place of death")], system=LOCAL),
    vs("palliative-register", "On the palliative care register", [("1403151000000103", "On palliative care register")]),
    vs("what-matters", "What matters to me", [("what-matters-to-me", "What matters to me")], system=LOCAL),
    vs("sharing-roles", "Sharing roles", [(r, r) for r in ["gp", "community", "hospice", "ambulance", "urgent-care", "acute", "care-home", "privacy-officer", "admin"]], system=ROLE),
]

# "Not yet discussed" has no SNOMED CT code in the domain reference: a local code, so that a CPR
# status can be recorded as known to be undecided rather than left blank.
next(v for v in valuesets if v["id"] == "cpr-decision")["compose"]["include"].append(
    {"system": LOCAL, "concept": [{"code": "cpr-not-yet-discussed", "display": "CPR decision not yet discussed"}]})

codesystems = [
    {"resourceType": "CodeSystem", "id": "sharing-role", "url": ROLE, "version": "0.1.0", "name": "SharingRole",
     "title": "Roles in the EPaCCS sharing rules", "status": "active", "content": "complete", "caseSensitive": True,
     "concept": [{"code": r, "display": r} for r in ["gp", "community", "hospice", "ambulance", "urgent-care", "acute", "care-home", "privacy-officer", "admin"]]},
    {"resourceType": "CodeSystem", "id": "epaccs-observables", "url": LOCAL, "version": "0.1.0", "name": "EPaCCSObservables",
     "title": "EPaCCS observables without a SNOMED CT code in the domain reference", "status": "active", "content": "complete", "caseSensitive": True,
     "concept": [{"code": "preferred-place-of-care", "display": "Preferred place of care"},
                 {"code": "preferred-place-of-death", "display": "Preferred place of death"},
                 {"code": "actual-place-of-death", "display": "Actual place of death"},
                 {"code": "second-choice", "display": "Second choice"},
                 {"code": "usual-residence", "display": "Is the usual place of residence"},
                 {"code": "what-matters-to-me", "display": "What matters to me"},
                 {"code": "cpr-not-yet-discussed", "display": "CPR decision not yet discussed"}]},
]

def el(path, **kw):
    e = {"id": path, "path": path}
    for k, v in kw.items():
        if k == "binding":
            e["binding"] = {"strength": "required", "valueSet": f"{BASE}/ValueSet/{v}"}
        elif k == "constraint":
            e["constraint"] = [{"key": key, "severity": "error", "human": human} for key, human in v]
        else:
            e[k] = v
    return e

def profile(id_, type_, title, applies, elements, description):
    sd = {"resourceType": "StructureDefinition", "id": id_, "url": f"{BASE}/StructureDefinition/{id_}", "version": "0.1.0",
          "name": id_.replace("-", ""), "title": title, "status": "active", "description": description,
          "fhirVersion": "4.0.1", "kind": "resource", "abstract": False, "type": type_,
          "baseDefinition": f"http://hl7.org/fhir/StructureDefinition/{type_}", "derivation": "constraint"}
    if applies:
        sd["extension"] = [{"url": APPLIES, "valueString": applies}]
    diff = [el(type_)] + elements if not any(e["path"] == type_ for e in elements) else elements
    sd["differential"] = {"element": diff}
    snap = []
    for e in diff:
        s = dict(e)
        s.setdefault("min", 0 if e["path"] != type_ else 0)
        s.setdefault("max", "*" if e["path"] != type_ else "*")
        s["base"] = {"path": e["path"], "min": 0, "max": "*"}
        snap.append(s)
    sd["snapshot"] = {"element": snap}
    return sd

cc = lambda code, system=SCT: {"coding": [{"system": system, "code": code}]}
profiles = [
    profile("EPaCCS-Patient", "Patient", "EPaCCS Patient", "Patient", [
        el("Patient.identifier", min=0, max="*"),
        el("Patient.name", min=1, max="*"),
        el("Patient.birthDate", min=0, max="1"),
        el("Patient.generalPractitioner", min=0, max="*"),
    ], "A person on the register: NHS number (Modulus 11 checked), name, birth date, address with postcode, registered GP practice by ODS code."),
    profile("EPaCCS-ConsentToShare", "Consent", "Consent to share the EoL care coordination record",
        "Consent.category in " + f"{BASE}/ValueSet/consent-to-share", [
        el("Consent", constraint=[("ppc-1", "Either a Policy or PolicyRule")]),
        el("Consent.status", min=1, max="1"),
        el("Consent.scope", min=1, max="1", patternCodeableConcept=cc("patient-privacy", "http://terminology.hl7.org/CodeSystem/consentscope")),
        el("Consent.category", min=1, max="*", binding="consent-to-share"),
        el("Consent.patient", min=1, max="1"),
        el("Consent.dateTime", min=1, max="1"),
        el("Consent.performer", min=1, max="*"),
    ], "Consent, withdrawal, best-interests decision or LPA consent to share; performer is the person, the decision maker or the LPA."),
    profile("EPaCCS-CPRDecision", "Observation", "CPR decision", "Observation.code in " + f"{BASE}/ValueSet/cpr-decision", [
        el("Observation", constraint=[("epaccs-review-1", "A planned review date is at most 3 months ahead")]),
        el("Observation.status", min=1, max="1"),
        el("Observation.code", min=1, max="1", binding="cpr-decision"),
        el("Observation.subject", min=1, max="1"),
        el("Observation.effective[x]", min=1, max="1"),
        el("Observation.performer", min=1, max="*"),
    ], "Whether CPR should be attempted, with the decision date (effective), the senior clinician who decided (performer), who was involved and informed (component or note) and a planned review date."),
    profile("EPaCCS-ReSPECTForm", "Composition", "ReSPECT form (document)", "Composition.type in " + f"{BASE}/ValueSet/respect-form", [
        el("Composition", constraint=[("epaccs-respect-1", "Section 4 (clinical recommendations for emergency care and treatment) is present")]),
        el("Composition.status", min=1, max="1"),
        el("Composition.type", min=1, max="1", binding="respect-form"),
        el("Composition.subject", min=1, max="1"),
        el("Composition.date", min=1, max="1"),
        el("Composition.author", min=1, max="*"),
        el("Composition.section", min=1, max="9"),
    ], "A ReSPECT form (version 3) as a document: sections 1-9 (plan belongs to, shared understanding, what matters (0-10), clinical recommendations incl. CPR, capacity, involvement, clinicians' signatures, emergency contacts, reviews)."),
    profile("EPaCCS-RegisterEnrolment", "Flag", "Enrolment on the palliative care register", "Flag.code in " + f"{BASE}/ValueSet/palliative-register", [
        el("Flag.status", min=1, max="1"),
        el("Flag.subject", min=1, max="1"),
        el("Flag.period", min=1, max="1"),
        el("Flag.period.start", min=1, max="1"),
    ], "The person is on the palliative care register (1403151000000103) from period.start."),
    profile("EPaCCS-WhatMattersGoal", "Goal", "What matters to me", "Goal.category in " + f"{BASE}/ValueSet/what-matters", [
        el("Goal.lifecycleStatus", min=1, max="1"),
        el("Goal.description", min=1, max="1"),
        el("Goal.subject", min=1, max="1"),
    ], "A 'what matters to me' goal of an advance or end-of-life care plan, in the person's words."),
    profile("EPaCCS-CareTeam", "CareTeam", "Key worker and contacts", "CareTeam", [
        el("CareTeam.status", min=1, max="1"),
        el("CareTeam.subject", min=1, max="1"),
        el("CareTeam.participant", min=1, max="*"),
        el("CareTeam.participant.member", min=1, max="1"),
    ], "The key worker, the professionals involved and 24-hour contacts; member by reference or by ODS/SDS identifier."),
    profile("EPaCCS-ReSPECTIndex", "DocumentReference", "ReSPECT form index (NRL-style pointer)", "DocumentReference.type in " + f"{BASE}/ValueSet/respect-form", [
        el("DocumentReference.status", min=1, max="1"),
        el("DocumentReference.type", min=1, max="1", binding="respect-form"),
        el("DocumentReference.category", min=1, max="*", patternCodeableConcept=cc("734163000")),
        el("DocumentReference.subject", min=1, max="1"),
        el("DocumentReference.content.attachment.url", min=1, max="1"),
    ], "The index of a ReSPECT form; at most one current per person, superseded with relatesTo replaces."),
    profile("EPaCCS-EoLCarePlan", "CarePlan", "End of life / advance care plan", "CarePlan.category in " + f"{BASE}/ValueSet/eol-care-plan", [
        el("CarePlan", constraint=[("epaccs-review-1", "A planned review date is at most 3 months ahead")]),
        el("CarePlan.status", min=1, max="1"),
        el("CarePlan.category", min=1, max="*", binding="eol-care-plan"),
        el("CarePlan.subject", min=1, max="1"),
        el("CarePlan.extension", min=1, max="*"),
    ], "An end-of-life or advance care plan with its planned review date (extension planned-review-date, at most 3 months ahead) and goals (Goal, 'what matters to me')."),
    profile("EPaCCS-PreferredPlace", "Observation", "Preferred place of care or death", "Observation.code in " + f"{BASE}/ValueSet/preferred-place-observables", [
        el("Observation", constraint=[("epaccs-ppd-1", "Either a preferred place (value) or the reason it is not recorded (dataAbsentReason)")]),
        el("Observation.status", min=1, max="1"),
        el("Observation.code", min=1, max="1", binding="preferred-place-observables"),
        el("Observation.subject", min=1, max="1"),
        el("Observation.valueCodeableConcept", binding="preferred-place"),
        el("Observation.dataAbsentReason", binding="preference-not-recorded"),
    ], "First choice as the value; second choice and the usual-residence flag as components; the reason when not recorded as dataAbsentReason."),
    profile("EPaCCS-ActualPlaceOfDeath", "Observation", "Actual place of death", "Observation.code in " + f"{BASE}/ValueSet/actual-place-observable", [
        el("Observation.status", min=1, max="1"),
        el("Observation.subject", min=1, max="1"),
        el("Observation.valueCodeableConcept", min=1, max="1", binding="actual-place-of-death"),
    ], "Where the person died, for preferred-versus-actual reporting (the date is Patient.deceasedDateTime)."),
    profile("EPaCCS-AdvanceDecision", "Observation", "ADRT, advance statement, LPA", "Observation.code in " + f"{BASE}/ValueSet/advance-decision", [
        el("Observation.status", min=1, max="1"),
        el("Observation.code", min=1, max="1", binding="advance-decision"),
        el("Observation.subject", min=1, max="1"),
    ], "An advance decision to refuse treatment, an advance statement, or an LPA for health and welfare (the holder as a RelatedPerson in focus)."),
    profile("EPaCCS-LPA", "Observation", "Lasting power of attorney for health and welfare", "Observation.code in " + f"{BASE}/ValueSet/lpa", [
        el("Observation.focus", min=1, max="*"),
    ], "The LPA holder(s) as RelatedPerson in focus; code 816381000000105 when they may decide on life-sustaining treatment."),
    profile("EPaCCS-Prognosis", "Observation", "Prognosis", "Observation.code in " + f"{BASE}/ValueSet/prognosis", [
        el("Observation.status", min=1, max="1"),
        el("Observation.subject", min=1, max="1"),
    ], "Prognosis (last days, weeks, months, about a year, more than a year)."),
    profile("EPaCCS-AKPS", "Observation", "AKPS functional status", "Observation.code in " + f"{BASE}/ValueSet/akps", [
        el("Observation", constraint=[("epaccs-akps-1", "AKPS is 0 to 100 in steps of 10")]),
        el("Observation.status", min=1, max="1"),
        el("Observation.subject", min=1, max="1"),
        el("Observation.value[x]", min=1, max="1"),
    ], "Australia-modified Karnofsky Performance Status, 0-100 in steps of 10."),
    profile("EPaCCS-AnticipatoryMedicines", "MedicationRequest", "Anticipatory medicines", "MedicationRequest.medicationCodeableConcept in " + f"{BASE}/ValueSet/anticipatory-medicines", [
        el("MedicationRequest", constraint=[("epaccs-meds-1", "Say where the medicines box is kept (extension anticipatory-medicines-location)")]),
        el("MedicationRequest.status", min=1, max="1"),
        el("MedicationRequest.subject", min=1, max="1"),
    ], "Anticipatory medicines in the house, with where the box is kept."),
]

# The emergency summary's own artefacts: its section codes, the kinds of decision conflict, and
# the extension that marks a conflict on the summary's Composition and its sections.
SECTION = f"{BASE}/CodeSystem/emergency-summary-section"
CONFLICT = f"{BASE}/CodeSystem/decision-conflict"
conflict_kinds = [
    ("cpr-decisions-disagree", "Current CPR decisions disagree",
     "The newest CPR decisions of two or more deciders (450475007 / 450476008) are all current and do not say the same."),
    ("cpr-decision-respect-disagree", "The CPR decision disagrees with the current ReSPECT form's CPR recommendation",
     "A current CPR decision says one thing and the current ReSPECT form's CPR recommendation (section 4) the other."),
    ("multiple-current-respect-forms", "More than one ReSPECT form is current",
     "More than one ReSPECT form is final and not superseded; at most one should be."),
]
valuesets.append(vs("decision-conflict", "Kinds of decision conflict", [(c, d) for c, d, _ in conflict_kinds], system=CONFLICT))
codesystems += [
    {"resourceType": "CodeSystem", "id": "emergency-summary-section", "url": SECTION, "version": "0.1.0", "name": "EmergencySummarySection",
     "title": "Sections of the EPaCCS emergency summary", "status": "active", "content": "complete", "caseSensitive": True,
     "description": "Codes naming the sections of the Patient/$emergency-summary document. Where a LOINC section code fits, the section carries it too.",
     "concept": [{"code": c, "display": d} for c, d in [
         ("deceased", "Deceased"),
         ("cpr-decision", "CPR decision"),
         ("respect-recommendations", "ReSPECT recommendations"),
         ("advance-decisions", "Advance decisions and advance statements"),
         ("lpa-and-contacts", "Lasting power of attorney and personal contacts"),
         ("preferred-place", "Preferred place of care and death"),
         ("anticipatory-medicines", "Anticipatory medicines and where they are kept"),
         ("key-worker-and-contacts", "Key worker and 24-hour contacts"),
         ("care-plans", "Care plans"),
         ("conditions-and-status", "Conditions, register and status")]]},
    {"resourceType": "CodeSystem", "id": "decision-conflict", "url": CONFLICT, "version": "0.1.0", "name": "DecisionConflict",
     "title": "Kinds of conflict between decisions in the record", "status": "active", "content": "complete", "caseSensitive": True,
     "concept": [{"code": c, "display": d, "definition": x} for c, d, x in conflict_kinds]},
]
conflict_url = f"{BASE}/StructureDefinition/decision-conflict"
profiles.append({
    "resourceType": "StructureDefinition", "id": "EPaCCS-DecisionConflict", "url": conflict_url, "version": "0.1.0",
    "name": "EPaCCSDecisionConflict", "title": "Decision conflict", "status": "active",
    "description": "On the emergency summary's Composition and on the sections concerned: decisions in the record conflict "
                   "(CPR decisions that disagree, a CPR decision against the current ReSPECT form, or more than one current "
                   "ReSPECT form). The summary shows every entry concerned and resolves nothing; the narrative says CONFLICT.",
    "fhirVersion": "4.0.1", "kind": "complex-type", "abstract": False,
    "context": [{"type": "element", "expression": "Composition"}, {"type": "element", "expression": "Composition.section"}],
    "type": "Extension", "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension", "derivation": "constraint",
    "differential": {"element": [
        {"id": "Extension", "path": "Extension", "short": "Decisions in the record conflict",
         "definition": "The kind of conflict and every entry concerned.", "min": 0, "max": "*"},
        {"id": "Extension.extension", "path": "Extension.extension", "min": 3,
         "slicing": {"discriminator": [{"type": "value", "path": "url"}], "rules": "closed"}},
        {"id": "Extension.extension:type", "path": "Extension.extension", "sliceName": "type", "min": 1, "max": "1",
         "short": "The kind of conflict"},
        {"id": "Extension.extension:type.url", "path": "Extension.extension.url", "fixedUri": "type"},
        {"id": "Extension.extension:type.value[x]", "path": "Extension.extension.value[x]", "min": 1,
         "type": [{"code": "Coding"}], "binding": {"strength": "required", "valueSet": f"{BASE}/ValueSet/decision-conflict"}},
        {"id": "Extension.extension:entry", "path": "Extension.extension", "sliceName": "entry", "min": 2, "max": "*",
         "short": "An entry concerned (a CPR decision Observation or a ReSPECT Composition), as the document's fullUrl"},
        {"id": "Extension.extension:entry.url", "path": "Extension.extension.url", "fixedUri": "entry"},
        {"id": "Extension.extension:entry.value[x]", "path": "Extension.extension.value[x]", "min": 1,
         "type": [{"code": "Reference", "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Observation",
                                                          "http://hl7.org/fhir/StructureDefinition/Composition"]}]},
        {"id": "Extension.url", "path": "Extension.url", "fixedUri": conflict_url},
        {"id": "Extension.value[x]", "path": "Extension.value[x]", "max": "0"},
    ]},
})

for r in valuesets + codesystems + profiles:
    kind = {"ValueSet": "valuesets", "CodeSystem": "codesystems", "StructureDefinition": "structuredefinitions"}[r["resourceType"]]
    os.makedirs(os.path.join(OUT, kind), exist_ok=True)
    with open(os.path.join(OUT, kind, r["id"] + ".json"), "w") as f:
        json.dump(r, f, indent=1)
        f.write("\n")
print(len(profiles), "profiles and extensions,", len(valuesets), "value sets,", len(codesystems), "code systems")
