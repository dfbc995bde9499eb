// The reference page's settings (a file, not an inline script: the page's
// Content-Security-Policy allows scripts from the ops listener only).
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  // Read-only: the client API is on another listener, over TLS, with a
  // token, and answers no CORS preflight; "Try it out" could not work.
  supportedSubmitMethods: [],
  // No badge fetched from an online validator.
  validatorUrl: null,
  docExpansion: "list",
  defaultModelsExpandDepth: 1,
});
