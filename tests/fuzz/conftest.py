"""Fuzz tests: hypothesis against every way in (FHIR JSON bodies, search parameters, HL7 v2
messages, CSV feed files). Each strategy runs SHAREDCARE_FUZZ_EXAMPLES examples (default 150);
set it higher for a long run. Derandomised, so a default run is repeatable."""

import sys
from pathlib import Path

HERE = str(Path(__file__).parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
