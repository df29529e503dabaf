// One run (execution): its log, following live while it runs (the API's server-sent log
// stream, read with fetch so that it carries the Authorization header), its progress and
// counters, and the actions on it.

import { call, events } from "./api.js";
import { announce, h, replace } from "./dom.js";
import { actionButtons, badge, every, facts, progressBar, updateButtons } from "./parts.js";
import { duration, localTime, runDuration } from "./words.js";

const REFRESH_MS = 1500;
const MAX_LINES = 5000; // lines kept on the page; older ones are dropped (bounded memory)
const RETRY_MS = [1000, 2000, 5000, 10000];
const ACTIVE = new Set(["queued", "running", "paused"]);

function number(value) {
  return value === null || value === undefined ? null : Number(value).toLocaleString("en");
}

function counters(execution) {
  const pair = (done, todo) => (done === null && todo === null ? null : `${done ?? "?"} of ${todo ?? "?"}`);
  const took = runDuration(execution);
  return facts([
    ["Trigger", execution.trigger],
    ["Attempt", execution.attempt ? String(execution.attempt) : null],
    ["Slot", execution.slot_at ? localTime(execution.slot_at) : null],
    ["Queued", execution.queued_at ? localTime(execution.queued_at, true) : null],
    ["Started", execution.started_at ? localTime(execution.started_at, true) : null],
    ["Finished", execution.finished_at ? localTime(execution.finished_at, true) : null],
    ["Duration", took === null ? null : duration(took)],
    ["Size", pair(number(execution.size_done), number(execution.size_todo))],
    ["Items", pair(number(execution.nodes_done), number(execution.nodes_todo))],
    ["Bandwidth", number(execution.bandwidth)],
    ["Message", execution.status_msg],
  ]);
}

function logLine(entry) {
  return h(
    "li",
    { class: `level-${entry.level || "info"}`, "data-idx": entry.idx },
    h("time", { datetime: entry.timestamp }, localTime(entry.timestamp, true).slice(11)),
    h("span", { class: "level" }, entry.level || ""),
    h("span", { class: "msg" }, entry.msg || ""),
  );
}

/** Show run `executionId` in `main`; returns {destroy}. */
export function runView(main, executionId) {
  const controller = new AbortController();
  const heading = h("h1", {}, `Run #${executionId}`);
  const crumbs = h("p", { class: "crumbs" }, h("a", { href: "#/" }, "All tasks"));
  const statusLine = h("p", { class: "run-status" });
  const actions = h("div");
  const details = h("div");
  const following = h("p", { class: "following muted", "aria-live": "polite" });
  const log = h("ol", { class: "log", role: "log", "aria-label": "Log", tabindex: "0" });
  let execution = null;
  let buttons = null;
  let nextIdx = 0;
  let ended = false;
  let stopPolling = null;

  replace(
    main,
    crumbs,
    heading,
    statusLine,
    actions,
    details,
    h("section", { "aria-labelledby": "h-log" }, h("h2", { id: "h-log" }, "Log"), following, log),
  );

  function show(current) {
    execution = current;
    replace(
      statusLine,
      badge(current.status),
      " ",
      ACTIVE.has(current.status) ? progressBar(current.progress, "Progress") : null,
    );
    statusLine.dataset.status = current.status;
    replace(details, counters(current));
    updateButtons(buttons, current.status);
  }

  async function poll() {
    show(await call(`/executions/${encodeURIComponent(executionId)}`, { signal: controller.signal }));
    if (!ACTIVE.has(execution.status) && ended && stopPolling) stopPolling();
  }

  function add(entry) {
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    log.append(logLine(entry));
    while (log.childElementCount > MAX_LINES) log.firstElementChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  // Follow the log until the run ends; on a dropped connection, go on from the next line.
  async function follow(taskId) {
    let attempt = 0;
    while (!ended && !controller.signal.aborted) {
      const query = new URLSearchParams({
        follow: "execution",
        execution_id: String(executionId),
        offset: String(nextIdx),
        limit: "1000",
      });
      following.textContent = "Following the log live…";
      try {
        for await (const event of events(`/tasks/${encodeURIComponent(taskId)}/log?${query}`, controller.signal)) {
          attempt = 0;
          if (event.event === "log") {
            add(event.data);
            nextIdx = Math.max(nextIdx, Number(event.data.idx) + 1);
          } else if (event.event === "end") {
            ended = true;
          } else if (event.event === "shutdown") {
            following.textContent = "taskd is shutting down; the log will go on when it is back.";
          }
        }
      } catch (error) {
        if (controller.signal.aborted) return;
        following.textContent = `The log stream broke (${error.message}); trying again…`;
      }
      if (ended) break;
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS[Math.min(attempt, RETRY_MS.length - 1)]));
      attempt += 1;
    }
    if (ended) {
      following.textContent = log.childElementCount ? "The run has ended." : "The run has ended; it logged nothing.";
      poll().catch(() => {});
    }
  }

  (async () => {
    try {
      const first = await call(`/executions/${encodeURIComponent(executionId)}`, { signal: controller.signal });
      const task = await call(`/tasks/${encodeURIComponent(first.task_id)}`, { signal: controller.signal });
      document.title = `Run #${executionId} of ${task.name} · taskd`;
      heading.textContent = `Run #${executionId} of ${task.name}`;
      crumbs.append(" › ", h("a", { href: `#/tasks/${encodeURIComponent(task.id)}` }, task.name));
      buttons = actionButtons({ id: task.id, status: first.status }, () => poll().catch(() => {}));
      if (buttons) {
        // Run now starts another run: its page is where to go.
        buttons.querySelector('[data-verb="run"]')?.remove();
        replace(actions, buttons);
      }
      show(first);
      stopPolling = every(REFRESH_MS, poll);
      await follow(task.id);
    } catch (error) {
      if (!controller.signal.aborted) announce(`Could not show run #${executionId}: ${error.message}`, true);
    }
  })();

  return {
    destroy() {
      controller.abort();
      if (stopPolling) stopPolling();
    },
  };
}
