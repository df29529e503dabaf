// Pieces the three views share: who is signed in, status badges, the action buttons.

import { call } from "./api.js";
import { announce, h } from "./dom.js";

/** Who the page acts for (from GET /api/v2/whoami) and the scopes they have. */
export const session = { name: null, allowed: new Set() };

export function can(scope) {
  return session.allowed.has(scope);
}

/** A status as a badge (coloured by the stylesheet, readable as text). */
export function badge(status) {
  const known = ["new", "queued", "running", "paused", "done", "canceled", "error", "skipped"];
  const name = known.includes(status) ? status : "unknown";
  return h("span", { class: `badge st-${name}` }, status || "unknown");
}

/** A progress bar with its percent as text; without a percent, an indeterminate bar (the
 * run goes on, it does not say how far it is). */
export function progressBar(percent, label) {
  if (percent === null || percent === undefined) {
    return h("span", { class: "progress" }, h("progress", { max: "100", "aria-label": label }));
  }
  const value = Math.max(0, Math.min(100, Number(percent)));
  return h(
    "span",
    { class: "progress" },
    h("progress", { max: "100", value: String(value), "aria-label": label }),
    h("span", { class: "percent" }, `${Math.round(value)} %`),
  );
}

// What each action button does, and in which task statuses it applies.
const ACTIONS = [
  { verb: "run", label: "Run now", when: () => true },
  { verb: "pause", label: "Pause", when: (s) => s === "running" },
  { verb: "resume", label: "Resume", when: (s) => s === "paused" || s === "canceled" },
  { verb: "stop", label: "Stop", when: (s) => s === "running" || s === "paused" },
  { verb: "force_stop", label: "Force stop", when: (s) => s === "running" || s === "paused" },
];

/**
 * The actions the caller may take on `task`, as buttons (none without `tasks/action`:
 * the buttons are absent, not disabled). `after(verb, answer)` runs once an action was
 * accepted.
 */
export function actionButtons(task, after) {
  if (!can("tasks/action")) return null;
  const group = h("div", { class: "actions", role: "group", "aria-label": "Actions" });
  for (const action of ACTIONS) {
    const button = h("button", {
      type: "button",
      class: `action action-${action.verb}`,
      "data-verb": action.verb,
      disabled: !action.when(task.status),
      text: action.label,
    });
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const answer = await call(`/tasks/${encodeURIComponent(task.id)}/action/${action.verb}`, {
          method: "PUT",
        });
        announce(answer && answer.msg ? `${action.label}: ${answer.msg}` : `${action.label}: accepted`);
        after(action.verb, answer);
      } catch (error) {
        announce(`${action.label} refused: ${error.message}`, true);
        button.disabled = false;
      }
    });
    group.append(button);
  }
  return group;
}

/** Refresh the `buttons` group in place for a task's new status (keeps keyboard focus). */
export function updateButtons(group, status) {
  if (!group) return;
  for (const button of group.querySelectorAll("button[data-verb]")) {
    const action = ACTIONS.find((a) => a.verb === button.dataset.verb);
    button.disabled = !action.when(status);
  }
}

/** A definition list from [term, value] pairs (values as text or nodes; empty ones left out). */
export function facts(pairs) {
  const list = h("dl", { class: "facts" });
  for (const [term, value] of pairs) {
    if (value === null || value === undefined || value === "") continue;
    list.append(h("dt", {}, term), h("dd", {}, value));
  }
  return list;
}

/** Run `tick` now and every `ms` while the tab is visible; returns the stopper. */
export function every(ms, tick) {
  let stopped = false;
  let timer = null;
  const loop = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await tick();
      } catch (error) {
        if (!stopped) announce(`Refresh failed: ${error.message}`, true);
      }
    }
    if (!stopped) timer = setTimeout(loop, ms);
  };
  loop();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
