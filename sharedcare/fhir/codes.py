"""Code systems and identifier systems sharedcare stamps on data.

Every module that labels or reads labels imports these names, so a label written by a feed is the
label governance reads.
"""

# National identifier systems (NHS England FHIR conventions).
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
SDS_USER_SYSTEM = "https://fhir.nhs.uk/Id/sds-user-id"

# sharedcare's own code systems.
BASE = "https://fhir.sharedcare.org.uk"
# meta.tag: the organisation (ODS code) that controls this resource -- whose agreements apply.
SOURCE_ORG_SYSTEM = f"{BASE}/CodeSystem/source-organisation"
# meta.tag: the data category an agreement shares (see governance.categories).
DATA_CATEGORY_SYSTEM = f"{BASE}/CodeSystem/data-category"
# meta.security: sensitive information, withheld unless role and purpose allow.
SENSITIVITY_SYSTEM = f"{BASE}/CodeSystem/sensitivity"
SENSITIVITY_CODES = (
    "sexual-health",
    "mental-health",
    "safeguarding",
    "gender-identity",
    "assisted-conception",
)
# Local (partner) identifiers: f"{LOCAL_ID_BASE}/{ods}/{kind}", e.g. a hospital MRN.
LOCAL_ID_BASE = f"{BASE}/Id/local"


def local_identifier_system(ods_code: str, kind: str = "mrn") -> str:
    return f"{LOCAL_ID_BASE}/{ods_code}/{kind}"


def feed_source(ods_code: str, feed_id: str) -> str:
    """The value of meta.source for a resource that arrived through a partner feed."""
    return f"{BASE}/feed/{ods_code}/{feed_id}"
