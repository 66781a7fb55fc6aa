// Soramai dashboard: a running job's page swaps in its live part (state, progress, loss chart,
// events) every two seconds until the job ends. Served by the binary; no other script runs.
"use strict";
(function () {
  const region = document.querySelector("[data-progress]");
  if (!region) return;
  const url = region.getAttribute("data-progress");
  async function refresh() {
    let done = false;
    try {
      const res = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (res.ok) {
        // The fragment is rendered by the server's auto-escaping templates.
        region.innerHTML = await res.text();
        const state = document.getElementById("job-state");
        done = state !== null && ["succeeded", "failed", "cancelled"].includes(state.textContent);
      }
    } catch (_) {
      // A dropped connection: try again on the next tick.
    }
    // Once it ends, the page itself is loaded again: without the cancel button or this script.
    if (done) location.reload();
    else setTimeout(refresh, 2000);
  }
  setTimeout(refresh, 2000);
})();
