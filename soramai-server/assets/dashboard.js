// Soramai dashboard: a running job's page swaps in its live part (state, progress, loss chart,
// events) every second and a half until the job ends; the passkey ceremonies; a dataset upload's
// progress (below). Served by the binary; no other script runs, and every page works without it.
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
    else setTimeout(refresh, 1500);
  }
  setTimeout(refresh, 1500);
})();

// Passkeys (WebAuthn): the server's options arrive as JSON with base64url fields, which the
// browser's API wants as bytes; its answer goes back the other way.
(function () {
  const toBytes = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4)), (c) => c.charCodeAt(0));
  const toText = (b) => btoa(String.fromCharCode(...new Uint8Array(b))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const status = (text) => {
    const s = document.getElementById("passkey-status");
    if (s) s.textContent = text;
  };
  async function call(url, csrf, body) {
    const res = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: JSON.stringify(body ?? {}),
    });
    const json = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(json.error || `the server answered ${res.status}`);
    return json;
  }

  const add = document.getElementById("passkey-add");
  if (add) {
    add.addEventListener("submit", async (event) => {
      event.preventDefault();
      const csrf = add.getAttribute("data-csrf");
      try {
        status("Follow your browser's prompt…");
        const { publicKey } = await call("/account/passkeys/options", csrf);
        publicKey.challenge = toBytes(publicKey.challenge);
        publicKey.user.id = toBytes(publicKey.user.id);
        for (const c of publicKey.excludeCredentials ?? []) c.id = toBytes(c.id);
        const cred = await navigator.credentials.create({ publicKey });
        const credential = {
          id: cred.id,
          rawId: toText(cred.rawId),
          type: cred.type,
          response: {
            attestationObject: toText(cred.response.attestationObject),
            clientDataJSON: toText(cred.response.clientDataJSON),
          },
          extensions: {},
        };
        await call("/account/passkeys", csrf, { name: document.getElementById("passkey-name").value, credential });
        location.reload();
      } catch (e) {
        status(`The passkey was not added: ${e.message}`);
      }
    });
  }

  const signIn = document.getElementById("passkey-sign-in");
  if (signIn) {
    signIn.addEventListener("submit", async (event) => {
      event.preventDefault();
      const csrf = signIn.getAttribute("data-csrf");
      try {
        const email = document.getElementById("email").value;
        if (!email) throw new Error("type your email first");
        status("Follow your browser's prompt…");
        const { publicKey } = await call("/sign_in/passkey/options", csrf, { email });
        publicKey.challenge = toBytes(publicKey.challenge);
        for (const c of publicKey.allowCredentials ?? []) c.id = toBytes(c.id);
        const cred = await navigator.credentials.get({ publicKey });
        const answer = {
          id: cred.id,
          rawId: toText(cred.rawId),
          type: cred.type,
          response: {
            authenticatorData: toText(cred.response.authenticatorData),
            clientDataJSON: toText(cred.response.clientDataJSON),
            signature: toText(cred.response.signature),
            userHandle: cred.response.userHandle ? toText(cred.response.userHandle) : null,
          },
          extensions: {},
        };
        const { redirect } = await call("/sign_in/passkey", csrf, answer);
        location.assign(redirect);
      } catch (e) {
        status(`Not signed in: ${e.message}`);
      }
    });
  }
})();

// A dataset upload shows its progress; the page the server answers with (the validation report,
// or the reason it was refused) then takes the place of this one's main part.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || form.id !== "dataset-upload") return;
  event.preventDefault();
  const bar = document.getElementById("upload-progress");
  bar.hidden = false;
  const xhr = new XMLHttpRequest();
  xhr.open("POST", form.action);
  xhr.upload.addEventListener("progress", (e) => {
    if (e.lengthComputable) bar.value = Math.round((e.loaded / e.total) * 100);
  });
  xhr.addEventListener("load", () => {
    const page = new DOMParser().parseFromString(xhr.responseText, "text/html");
    const main = page.querySelector("main");
    if (main) document.querySelector("main").replaceWith(main);
    else location.reload();
  });
  xhr.addEventListener("error", () => form.submit());
  xhr.send(new FormData(form));
});
