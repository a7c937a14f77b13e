// Form posts carry the session's CSRF token in the X-CSRF-Token header, which the api's guard
// asks of every write made with the session cookie (a plain cross-site form cannot send it).
// The server answers a good post with a redirect (followed here) and a refused one with the
// page again, its errors next to the fields. data-confirm asks first.
"use strict";

(function () {
  function token() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  async function submit(form, submitter) {
    const body = new URLSearchParams(new FormData(form, submitter));
    const response = await fetch(form.action, {
      method: "POST",
      body,
      credentials: "same-origin",
      headers: { "X-CSRF-Token": token(), Accept: "text/html" },
    });
    if (response.redirected) {
      window.location.assign(response.url);
      return;
    }
    const html = await response.text();
    document.open();
    document.write(html);
    document.close();
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || form.method.toLowerCase() !== "post") return;
    event.preventDefault();
    const question = (event.submitter && event.submitter.dataset.confirm) || form.dataset.confirm;
    if (question && !window.confirm(question)) return;
    for (const button of form.querySelectorAll("button")) button.disabled = true;
    submit(form, event.submitter).catch(() => {
      for (const button of form.querySelectorAll("button")) button.disabled = false;
      window.alert("The server could not be reached; nothing was sent. Try again.");
    });
  });

  // log out: the api's DELETE /v1/session, then the login page
  window.smsbusLogOut = async function () {
    await fetch("/v1/session", { method: "DELETE", credentials: "same-origin", headers: { "X-CSRF-Token": token() } });
    window.location.assign("/login");
  };
})();

// a form the server sent back with errors: the first wrong field gets the focus
document.addEventListener("DOMContentLoaded", () => {
  const wrong = document.querySelector('[aria-invalid="true"]');
  if (wrong) wrong.focus();
});
