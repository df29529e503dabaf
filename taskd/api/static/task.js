// One task: what it is, what it does next (the next 10 runs, daylight-saving moves
// marked), what it did (its executions, skipped slots with their reasons, and a 24-hour
// timeline), and the actions the caller may take.

import { ApiError, call } from "./api.js";
import { h, replace, s } from "./dom.js";
import { actionButtons, badge, every, facts, progressBar, updateButtons } from "./parts.js";
import { dstWords, duration, localTime, relative, runDuration, taskScheduleWords } from "./words.js";

const REFRESH_MS = 4000;
const NEXT_RUNS_MS = 60000;
const EXECUTIONS_PAGE = 50;
const DAY_MS = 24 * 3600 * 1000;
// The fields of a definition, in the order people read them.
const DEFINITION = [
  "task_module", "task_params", "schedules", "next_run_at", "enabled", "task_timeout_sec",
  "options", "email", "metadata", "workflow_type", "workflow_action", "frontend_prefs",
];

function definitionOf(task) {
  const shown = {};
  for (const key of DEFINITION) if (task[key] !== undefined) shown[key] = task[key];
  return JSON.stringify(shown, null, 2);
}

function executionRow(execution) {
  const took = runDuration(execution);
  const skipped = execution.status === "skipped";
  return h(
    "tr",
    { class: skipped ? "skipped" : "" },
    h("td", {}, skipped ? `#${execution.id}` : h("a", { href: `#/runs/${encodeURIComponent(execution.id)}` }, `#${execution.id}`)),
    h("td", {}, execution.trigger || ""),
    h("td", {}, badge(execution.status)),
    h("td", { title: execution.slot_at || "" }, localTime(execution.slot_at || execution.queued_at)),
    h("td", { title: execution.started_at || "" }, localTime(execution.started_at, true)),
    h("td", {}, skipped || took === null ? "" : duration(took)),
    h("td", { class: "message" }, execution.status_msg || ""),
  );
}

/** The last 24 hours as an SVG: one bar per execution, coloured by status; skipped slots
 * as ticks. Every bar has a <title> (a tooltip, and what a screen reader says). */
export function timeline(executions, now = Date.now()) {
  const width = 1000;
  const height = 60;
  const start = now - DAY_MS;
  const x = (time) => ((time - start) / DAY_MS) * width;
  const recent = executions.filter((e) => {
    const end = e.finished_at ? Date.parse(e.finished_at) : now;
    const begin = Date.parse(e.started_at || e.slot_at || e.queued_at || "");
    return !Number.isNaN(begin) && end >= start;
  });
  // Stretched to the page's width (bars and ticks only: text would stretch too).
  const svg = s("svg", {
    class: "timeline",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `Executions in the last 24 hours: ${recent.length}`,
    preserveAspectRatio: "none",
  });
  svg.append(s("rect", { class: "track", x: 0, y: 4, width, height: 48 }));
  const hours = h("ol", { class: "hours", "aria-hidden": "true" });
  for (let hour = 0; hour <= 24; hour += 3) {
    const time = start + hour * 3600 * 1000;
    const at = Math.min(width - 1, Math.max(1, x(time)));
    svg.append(s("line", { class: "tick", x1: at, x2: at, y1: 52, y2: height }));
    const label = new Date(time);
    hours.append(h("li", {}, `${String(label.getHours()).padStart(2, "0")}:${String(label.getMinutes()).padStart(2, "0")}`));
  }
  for (const e of recent) {
    const title = s("title", {}, `#${e.id} ${e.status}${e.status_msg ? `: ${e.status_msg}` : ""}`);
    if (e.status === "skipped") {
      const at = x(Date.parse(e.slot_at || e.queued_at));
      svg.append(s("rect", { class: "bar st-skipped", x: Math.min(width - 3, at - 1), y: 4, width: 3, height: 48 }, title));
      continue;
    }
    const begin = Math.max(start, Date.parse(e.started_at || e.queued_at || e.slot_at));
    const end = e.finished_at ? Date.parse(e.finished_at) : now;
    const barWidth = Math.max(4, x(end) - x(begin));
    const left = Math.min(width - barWidth, x(begin)); // a run that just ended stays in view
    svg.append(s("rect", { class: `bar st-${e.status}`, x: left, y: 12, width: barWidth, height: 32 }, title));
  }
  return h("figure", { class: "timeline-figure" }, svg, hours);
}

export function nextRunsTable(runs) {
  return h(
    "table",
    { class: "next-runs" },
    h("caption", { class: "visually-hidden" }, "The next 10 runs"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Local time"), h("th", { scope: "col" }, "UTC"), h("th", { scope: "col" }, "Daylight-saving time"))),
    h(
      "tbody",
      {},
      runs.map((run) =>
        h(
          "tr",
          { class: run.dst ? "dst" : "" },
          h("td", {}, h("time", { datetime: run.at }, run.local || run.at)),
          h("td", {}, run.at),
          h("td", {}, run.dst ? h("strong", {}, dstWords(run.dst)) : ""),
        ),
      ),
    ),
  );
}

/** Show task `taskId` in `main`; returns {destroy}. */
export function taskView(main, taskId) {
  const path = `/tasks/${encodeURIComponent(taskId)}`;
  const controller = new AbortController();
  const heading = h("h1", {}, `Task ${taskId}`);
  const description = h("p", { class: "description" });
  const actions = h("div");
  const summary = h("div");
  const definition = h("pre", { class: "definition", tabindex: "0" });
  const nextRuns = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const timelineBox = h("div", { class: "timeline-box" });
  const executionsBody = h("tbody");
  const more = h("button", { type: "button", class: "more", hidden: true }, "Show more executions");
  let buttons = null;
  let shownExecutions = EXECUTIONS_PAGE;
  let actionsFor = null;

  replace(
    main,
    h("p", { class: "crumbs" }, h("a", { href: "#/" }, "All tasks")),
    heading,
    description,
    actions,
    summary,
    h("section", { "aria-labelledby": "h-next" }, h("h2", { id: "h-next" }, "Next runs"), nextRuns),
    h("section", { "aria-labelledby": "h-timeline" }, h("h2", { id: "h-timeline" }, "Last 24 hours"), timelineBox),
    h(
      "section",
      { "aria-labelledby": "h-executions" },
      h("h2", { id: "h-executions" }, "Executions"),
      h(
        "div",
        { class: "wide", tabindex: "0", role: "region", "aria-label": "Executions" },
        h(
          "table",
          { class: "executions" },
          h("caption", { class: "visually-hidden" }, "Executions, newest first, with skipped slots and why"),
          h(
            "thead",
            {},
            h("tr", {}, ["Run", "Trigger", "Status", "Slot", "Started", "Took", "Message"].map((name) => h("th", { scope: "col" }, name))),
          ),
          executionsBody,
        ),
      ),
      more,
    ),
    h("section", { "aria-labelledby": "h-definition" }, h("h2", { id: "h-definition" }, "Definition"), definition),
  );

  function showTask(task) {
    document.title = `${task.name} · taskd`;
    heading.textContent = task.name;
    description.textContent = task.comment || "";
    const running = task.status === "running" || task.status === "paused";
    replace(
      summary,
      facts([
        ["Status", h("span", {}, badge(task.status), " ", running ? progressBar(task.status_percent, "Progress") : null)],
        ["Module", task.task_module],
        ["Schedule", taskScheduleWords(task)],
        ["Next run", task.next_run_at ? `${localTime(task.next_run_at)} (${relative(task.next_run_at)})` : task.enabled === false ? "disabled" : "none"],
        ["Running since", running && task.run_started_at ? localTime(task.run_started_at, true) : null],
        ["Source", task.source],
      ]),
    );
    definition.textContent = definitionOf(task);
    if (actionsFor !== task.id) {
      actionsFor = task.id;
      buttons = actionButtons(task, (verb, answer) => {
        if (verb === "run" && answer && answer.execution_id) {
          location.hash = `#/runs/${encodeURIComponent(answer.execution_id)}`;
        } else refreshTask();
      });
      replace(actions, buttons);
    }
    updateButtons(buttons, task.status);
  }

  async function refreshTask() {
    const [task, listed] = await Promise.all([
      call(path, { signal: controller.signal }),
      call(`${path}/executions?limit=${shownExecutions}`, { signal: controller.signal }),
    ]);
    showTask(task);
    const executions = listed.executions || [];
    replace(
      executionsBody,
      executions.length
        ? executions.map(executionRow)
        : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No execution yet.")),
    );
    more.hidden = executions.length < shownExecutions;
    // The timeline wants the last day: ask for more when the page shows fewer.
    const day = executions.length === shownExecutions
      ? (await call(`${path}/executions?limit=1000`, { signal: controller.signal })).executions
      : executions;
    replace(timelineBox, timeline(day));
  }

  async function refreshNextRuns() {
    try {
      const answer = await call(`${path}/next_runs?count=10`, { signal: controller.signal });
      const runs = answer.next_runs || [];
      replace(
        nextRuns,
        runs.length
          ? h("div", { class: "wide", tabindex: "0", role: "region", "aria-label": "Next runs" }, nextRunsTable(runs))
          : h("p", { class: "muted" }, "No run is planned."),
      );
    } catch (error) {
      if (controller.signal.aborted) return;
      const why = error instanceof ApiError && error.status === 404 ? "" : ` (${error.message})`;
      replace(nextRuns, h("p", { class: "muted unavailable" }, `Next runs unavailable${why}.`));
    }
  }

  more.addEventListener("click", () => {
    shownExecutions += EXECUTIONS_PAGE;
    refreshTask().catch(() => {});
  });
  const stopTask = every(REFRESH_MS, refreshTask);
  const stopNext = every(NEXT_RUNS_MS, refreshNextRuns);
  return {
    destroy() {
      stopTask();
      stopNext();
      controller.abort();
    },
  };
}
