// Runs first thing in <body> (a file, not inline, so the Content-Security-Policy can forbid
// inline scripts): tells the NHS.UK design system's CSS that JavaScript is on.
document.body.className += ' js-enabled' +
  ('noModule' in HTMLScriptElement.prototype ? ' nhsuk-frontend-supported' : '');
