// Starts the NHS.UK design system's components (details, error summary, header menu ...).
import { initAll } from '/static/nhsuk/nhsuk-frontend.min.js';

initAll();
