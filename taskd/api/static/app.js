// The page's entry point: sign-in, then one of three views by the address's #fragment:
// #/ (the tasks), #/tasks/<id> (a task), #/runs/<execution id> (a run).

import { authorization, basic, bearer, call, setAuthorization, whenUnauthorized } from "./api.js";
import { announce, h, replace } from "./dom.js";
import { session } from "./parts.js";
import { runView } from "./run.js";
import { taskView } from "./task.js";
import { tasksView } from "./tasks.js";

const main = document.getElementById("main");
const who = document.getElementById("who");
const signOutButton = document.getElementById("sign-out");
// "not-needed" when the page came over a trusted Unix socket (taskd says so in index.html).
const signInNeeded =
  document.querySelector('meta[name="taskd-sign-in"]')?.getAttribute("content") !== "not-needed";
let view = null;
let signingIn = false; // a 401 while signing in is the form's to tell

function route() {
  if (view) view.destroy();
  view = null;
  announce("");
  const hash = location.hash || "#/";
  let match;
  if ((match = hash.match(/^#\/tasks\/([^/]+)$/))) {
    view = taskView(main, decodeURIComponent(match[1]));
  } else if ((match = hash.match(/^#\/runs\/([^/]+)$/))) {
    view = runView(main, decodeURIComponent(match[1]));
  } else {
    document.title = "Tasks · taskd";
    view = tasksView(main);
  }
}

async function identify() {
  const me = await call("/whoami");
  session.name = me.name;
  session.allowed = new Set(me.allowed || []);
  who.textContent = `Signed in as ${me.name}`;
  signOutButton.hidden = !authorization();
}

function signInView(problem) {
  if (view) view.destroy();
  view = null;
  document.title = "Sign in · taskd";
  who.textContent = "";
  signOutButton.hidden = true;
  const kind = (value, label, checked) =>
    h("label", { class: "choice" }, h("input", { type: "radio", name: "kind", value, checked }), ` ${label}`);
  const keyField = h(
    "p",
    { class: "field key-field" },
    h("label", { for: "sign-in-key" }, "Key or token"),
    h("input", { id: "sign-in-key", type: "password", autocomplete: "off", required: true }),
  );
  const userField = h(
    "div",
    { class: "user-field", hidden: true },
    h("p", { class: "field" }, h("label", { for: "sign-in-user" }, "User"), h("input", { id: "sign-in-user", autocomplete: "username" })),
    h("p", { class: "field" }, h("label", { for: "sign-in-password" }, "Password"), h("input", { id: "sign-in-password", type: "password", autocomplete: "current-password" })),
  );
  const error = h("p", { class: "error", role: "alert" }, problem || "");
  const form = h(
    "form",
    { class: "sign-in" },
    h(
      "fieldset",
      {},
      h("legend", {}, "Sign in with"),
      kind("key", "an API key (or a token)", true),
      kind("user", "a user's password", false),
    ),
    keyField,
    userField,
    error,
    h("button", { type: "submit" }, "Sign in"),
    h("p", { class: "muted" }, "Your credentials stay in this browser tab (sessionStorage) and go to taskd only, in the Authorization header."),
  );
  form.addEventListener("change", () => {
    const byUser = form.elements.kind.value === "user";
    userField.hidden = !byUser;
    keyField.hidden = byUser;
    keyField.querySelector("input").required = !byUser;
    userField.querySelectorAll("input").forEach((input) => (input.required = byUser));
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const byUser = form.elements.kind.value === "user";
    const header = byUser
      ? basic(form.elements["sign-in-user"].value, form.elements["sign-in-password"].value)
      : bearer(form.elements["sign-in-key"].value);
    setAuthorization(header);
    error.textContent = "";
    signingIn = true;
    try {
      await identify();
    } catch (failure) {
      setAuthorization(null);
      error.textContent = failure.status === 401 ? "taskd refused these credentials." : `Sign-in failed: ${failure.message}`;
      return;
    } finally {
      signingIn = false;
    }
    route();
  });
  replace(main, h("h1", {}, "Sign in to taskd"), form);
  form.querySelector("input:not([type=radio])").focus();
}

function signOut() {
  setAuthorization(null);
  session.name = null;
  session.allowed = new Set();
  signInView("");
}

async function start() {
  whenUnauthorized(() => {
    if (!signInNeeded || signingIn) return;
    setAuthorization(null);
    signInView("Please sign in again: taskd no longer accepts these credentials.");
  });
  signOutButton.addEventListener("click", signOut);
  window.addEventListener("hashchange", () => {
    // "#main" (the skip link) is no view: the browser moves the focus there itself.
    if (session.name && (!location.hash || location.hash.startsWith("#/"))) route();
  });
  if (signInNeeded && !authorization()) {
    signInView("");
    return;
  }
  try {
    await identify();
  } catch (failure) {
    if (signInNeeded) signInView(failure.status === 401 ? "" : `taskd did not answer: ${failure.message}`);
    else replace(main, h("h1", {}, "taskd"), h("p", { class: "error" }, `taskd did not answer: ${failure.message}`));
    return;
  }
  route();
}

start();
