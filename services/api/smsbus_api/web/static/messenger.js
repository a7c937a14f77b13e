// The Messenger's composer and thread: the live part counter (SmsCounter, same rules as
// smsbus.encoding) and keeping the newest message in view.
"use strict";

(function () {
  const NAMES = { gsm7: "GSM-7", latin1: "Latin-1", ucs2: "UCS-2 (Unicode)" };

  function preferredFor(select) {
    const option = select && select.selectedOptions[0];
    const listed = option && option.dataset.encodings;
    return listed ? listed.split(",") : ["gsm7", "ucs2"];
  }

  function bindCounter() {
    const form = document.getElementById("composer");
    if (!form) return;
    const table = JSON.parse(document.getElementById("counter-table").textContent);
    const body = form.querySelector("#body");
    const channel = form.querySelector("#channel");
    const counter = form.querySelector("#counter");
    const update = () => {
      const c = SmsCounter.count(body.value, table, preferredFor(channel));
      const left = c.encoding === "ucs2" ? Math.floor(c.left / 2) : c.left;
      const parts = c.parts === 1 ? "1 part" : `${c.parts} parts`;
      counter.textContent = `${c.characters} characters · ${parts} · ${NAMES[c.encoding]} · ${left} left in this part`;
      counter.dataset.parts = String(c.parts);
      counter.dataset.encoding = c.encoding;
      counter.classList.toggle("too-long", Boolean(c.tooLong));
    };
    body.addEventListener("input", update);
    if (channel) channel.addEventListener("change", update);
    // Ctrl+Enter sends, as in most messengers; Enter alone is a new line
    body.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
    });
    update();
  }

  function keepNewestInView() {
    const thread = document.getElementById("thread");
    if (!thread) return;
    thread.scrollTop = thread.scrollHeight;
    thread.addEventListener("live:updated", () => { thread.scrollTop = thread.scrollHeight; });
  }

  document.addEventListener("DOMContentLoaded", () => {
    bindCounter();
    keepNewestInView();
  });
})();
