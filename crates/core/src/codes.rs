//! Code systems and the SNOMED CT codes the record's rules depend on (see the domain reference).

pub const SNOMED: &str = "http://snomed.info/sct";
pub const LOINC: &str = "http://loinc.org";

/// Consent to share the end-of-life care coordination record (SCCI1580 item 1).
pub mod consent {
    pub const GIVEN: &str = "882921000000109";
    pub const WITHDRAWN: &str = "882941000000102";
    pub const BEST_INTERESTS: &str = "882961000000101";
    pub const BY_LPA: &str = "883001000000106";
}

pub const ON_PALLIATIVE_REGISTER: &str = "1403151000000103";
pub const RESPECT_FORM: &str = "1382601000000107";
pub const EOL_CARE_PLAN: &str = "736373009";
pub const ADVANCE_CARE_PLAN: &str = "736366004";
pub const CARE_PLAN_CATEGORY: &str = "734163000";
pub const FOR_CPR: &str = "450475007";
pub const NOT_FOR_CPR: &str = "450476008";
/// A CPR status recorded as not yet discussed (local code in `EPACCS_OBSERVABLES`: the domain
/// reference has no SNOMED CT concept for it).
pub const CPR_NOT_DISCUSSED: &str = "cpr-not-yet-discussed";
/// The service's own CodeSystem for observables without a SNOMED CT code.
pub const EPACCS_OBSERVABLES: &str =
    "https://fhir.epaccs.nhs.example/CodeSystem/epaccs-observables";
pub const HAS_ADVANCE_STATEMENT: &str = "816281000000101";
pub const HAS_ADRT: &str = "816301000000100";
pub const HAS_ADRT_LIFE_SUSTAINING: &str = "816321000000109";
pub const HAS_LPA_WELFARE: &str = "816361000000101";
pub const HAS_LPA_LIFE_SUSTAINING: &str = "816381000000105";
pub const ANTICIPATORY_MEDS_BOX: &str = "376201000000102";
pub const ANTICIPATORY_MEDS_PRESCRIPTION: &str = "871021000000106";
pub const AKPS: &str = "901671000000100";

/// Preferred place of death codes.
pub const PREFERRED_PLACE_OF_DEATH: [&str; 7] = [
    "110481000000108",
    "108401000000102",
    "109401000000108",
    "89751000000108",
    "89761000000106",
    "512071000000106",
    "819211000000102",
];

/// Prognosis codes.
pub const PROGNOSIS: [&str; 5] = [
    "511401000000102",
    "955231000000109",
    "968211000000101",
    "767503006",
    "1413121000000106",
];
