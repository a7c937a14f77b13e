// The login form posts to the api's POST /v1/session (which sets the HttpOnly session cookie)
// and then opens the page the user wanted.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login");
  const error = document.getElementById("login-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const response = await fetch("/v1/session", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: data.get("name"), password: data.get("password") }),
    });
    if (response.ok) {
      const next = form.dataset.next;
      window.location.assign(next.startsWith("/") && !next.startsWith("//") ? next : "/");
      return;
    }
    let detail = "The server could not log you in.";
    try {
      detail = (await response.json()).detail || detail;
    } catch (ignored) {}
    error.textContent = response.status === 401 ? "Wrong user name or password." : detail;
    error.hidden = false;
    form.querySelector("#password").select();
  });
});
