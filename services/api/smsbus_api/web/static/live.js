// Live parts of the pages: every element with data-live-url is fetched again (server-rendered
// HTML) when /v1/events says the queue or the configuration changed. The event is a hint, as
// on the bus; a slow poll stays the guarantee. Nothing runs on a page without live parts.
"use strict";

(function () {
  const POLL_MS = 15000;
  const SETTLE_MS = 120;
  let pending = null;

  async function refreshOne(element) {
    const response = await fetch(element.dataset.liveUrl, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (response.status === 401 || response.redirected) {
      window.location.reload();
      return;
    }
    if (!response.ok) return;
    const html = await response.text();
    if (element.dataset.liveHtml === html) return;
    element.dataset.liveHtml = html;
    element.innerHTML = html;
    element.dispatchEvent(new CustomEvent("live:updated", { bubbles: true }));
  }

  function refresh() {
    pending = null;
    document.querySelectorAll("[data-live-url]").forEach((element) => refreshOne(element).catch(() => {}));
  }

  // a burst of changes (a 10-part message's receipts) becomes one refresh
  function schedule() {
    if (pending === null) pending = setTimeout(refresh, SETTLE_MS);
  }

  function start() {
    if (!document.querySelector("[data-live-url]")) return;
    const source = new EventSource("/v1/events");
    source.addEventListener("open", () => { document.body.dataset.live = "connected"; });
    source.addEventListener("error", () => { document.body.dataset.live = "reconnecting"; });
    source.addEventListener("message", schedule);
    // the api sends "notification" for every bus wake-up (status, config.*, health.*)
    for (const kind of ["notification", "reset"]) source.addEventListener(kind, schedule);
    setInterval(schedule, POLL_MS);
    // parts that change without a bus event (health reports age, supervisord states) ask
    // more often: data-live-every="3000"
    document.querySelectorAll("[data-live-every]").forEach((element) => {
      setInterval(() => refreshOne(element).catch(() => {}), Number(element.dataset.liveEvery));
    });
  }

  window.smsbusLive = { refresh: schedule };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
