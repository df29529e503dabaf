// The task list: every task the caller may see, sorted by next run, filtered by name and
// status, refreshed every few seconds. It pages the API (PAGE tasks a request) and puts
// only the rows in view (and a few around them) in the table, so 10,000 tasks cost what
// 30 do; spacer rows keep the scroll bar true to the whole list.

import { call } from "./api.js";
import { h, replace } from "./dom.js";
import { badge, every, progressBar } from "./parts.js";
import { duration, localTime, relative, runDuration, taskScheduleWords } from "./words.js";

export const PAGE = 100;
const ROW_PX = 44; // the height of a row: .tasks tbody tr in style.css
const OVERSCAN = 6; // rows rendered above and below the visible ones
const REFRESH_MS = 5000;
const STATUSES = ["new", "queued", "running", "paused", "done", "canceled", "error"];
const COLUMNS = [
  ["name", "Name"],
  ["module", "Module"],
  ["schedule", "Schedule"],
  ["status", "Status"],
  ["last", "Last run"],
  ["next", "Next run"],
];

function lastRunCell(execution) {
  if (!execution) return h("td", { class: "col-last muted" }, "never");
  const when = execution.finished_at || execution.started_at || execution.slot_at;
  const took = runDuration(execution);
  return h(
    "td",
    { class: "col-last", title: when || "" },
    badge(execution.status),
    " ",
    relative(when),
    took === null || execution.status === "skipped" ? "" : ` · ${duration(took)}`,
  );
}

function nextRunCell(task) {
  if (task.enabled === false) return h("td", { class: "col-next muted" }, "disabled");
  if (!task.next_run_at) return h("td", { class: "col-next muted" }, "—");
  return h(
    "td",
    { class: "col-next", title: task.next_run_at },
    h("time", { datetime: task.next_run_at }, localTime(task.next_run_at)),
    h("span", { class: "relative muted" }, ` ${relative(task.next_run_at)}`),
  );
}

function taskRow(task, index) {
  const running = task.status === "running" || task.status === "paused";
  return h(
    "tr",
    { "aria-rowindex": index + 2, "data-task-id": task.id },
    h(
      "td",
      { class: "col-name" },
      h("a", { href: `#/tasks/${encodeURIComponent(task.id)}` }, task.name),
    ),
    h("td", { class: "col-module" }, task.task_module || ""),
    h("td", { class: "col-schedule" }, taskScheduleWords(task)),
    h(
      "td",
      { class: "col-status" },
      badge(task.status),
      running ? progressBar(task.status_percent, `Progress of ${task.name}`) : null,
    ),
    lastRunCell(task.last_execution),
    nextRunCell(task),
  );
}

function placeholderRow(index) {
  return h(
    "tr",
    { "aria-rowindex": index + 2, class: "loading" },
    h("td", { colspan: COLUMNS.length }, "Loading…"),
  );
}

/** A spacer row standing for `rows` rows that are not rendered. */
function spacer() {
  const cell = h("td", { colspan: COLUMNS.length });
  return h("tr", { class: "spacer", "aria-hidden": "true" }, cell);
}

function setRows(row, rows) {
  row.hidden = rows <= 0;
  row.firstChild.style.height = `${Math.max(0, rows) * ROW_PX}px`; // CSSOM: the CSP allows it
}

/** Show the task list in `main`; returns {destroy}. */
export function tasksView(main) {
  const filters = { name: "", status: "" };
  let total = null;
  let pages = new Map(); // page index -> tasks
  const loading = new Map(); // page index -> promise
  let generation = 0; // bumped by a filter change: older answers are dropped
  let frame = null;

  const nameInput = h("input", { id: "filter-name", type: "search", autocomplete: "off" });
  const statusSelect = h(
    "select",
    { id: "filter-status" },
    h("option", { value: "" }, "any"),
    STATUSES.map((status) => h("option", { value: status }, status)),
  );
  const count = h("p", { class: "count", id: "task-count", "aria-live": "polite" }, "Loading…");
  const body = h("tbody");
  const table = h(
    "table",
    { class: "tasks", "aria-describedby": "task-count" },
    h("caption", { class: "visually-hidden" }, "Tasks, sorted by next run"),
    h(
      "thead",
      {},
      h(
        "tr",
        { "aria-rowindex": 1 },
        COLUMNS.map(([key, label]) => h("th", { scope: "col", class: `col-${key}` }, label)),
      ),
    ),
    body,
  );
  const scroller = h(
    "div",
    { class: "scroller", tabindex: "0", role: "region", "aria-label": "Task list" },
    table,
  );
  replace(
    main,
    h("h1", {}, "Tasks"),
    h(
      "form",
      { class: "filters", role: "search", onsubmit: (event) => event.preventDefault() },
      h("label", { for: "filter-name" }, "Name"),
      nameInput,
      h("label", { for: "filter-status" }, "Status"),
      statusSelect,
    ),
    count,
    scroller,
  );

  function visibleRange() {
    const head = table.tHead ? table.tHead.offsetHeight : 0;
    const top = Math.max(0, scroller.scrollTop - head);
    const first = Math.max(0, Math.floor(top / ROW_PX) - OVERSCAN);
    const shown = Math.ceil((scroller.clientHeight || window.innerHeight) / ROW_PX);
    const last = Math.min((total ?? PAGE) - 1, first + shown + 2 * OVERSCAN);
    return [first, last];
  }

  function query(page) {
    const params = new URLSearchParams({
      limit: String(PAGE),
      offset: String(page * PAGE),
      sort_by: "next_run_at:asc",
    });
    if (filters.name) params.set("name", `*${filters.name}*`);
    if (filters.status) params.set("status", filters.status);
    return `/tasks?${params}`;
  }

  function load(page) {
    if (loading.has(page)) return loading.get(page);
    const asked = generation;
    const promise = call(query(page))
      .then((answer) => {
        if (asked !== generation) return;
        total = answer.count;
        pages.set(page, answer.tasks);
        schedule();
      })
      .finally(() => loading.delete(page));
    loading.set(page, promise);
    return promise;
  }

  // Rendered rows by position and task, with what they showed: a row whose task did not
  // change is kept as it is (a click or the keyboard focus on it is not lost).
  let rendered = new Map();
  const above = spacer();
  const below = spacer();

  function rowFor(task, index) {
    const key = `${index}:${task.id}`;
    // Relative times ("in 4 min") age: a row is redrawn at least every half minute.
    const look = JSON.stringify(task) + Math.floor(Date.now() / 30000);
    const known = rendered.get(key);
    if (known && known.look === look) return [key, known];
    return [key, { look, row: taskRow(task, index) }];
  }

  function render() {
    frame = null;
    if (total === null) return;
    count.textContent = `${total} ${total === 1 ? "task" : "tasks"}`;
    table.setAttribute("aria-rowcount", String(total + 1));
    if (total === 0) {
      rendered = new Map();
      body.replaceChildren(
        h("tr", {}, h("td", { colspan: COLUMNS.length, class: "muted" }, "No task matches.")),
      );
      return;
    }
    const [first, last] = visibleRange();
    const next = new Map();
    const rows = [above];
    for (let index = first; index <= last; index += 1) {
      const page = Math.floor(index / PAGE);
      const tasks = pages.get(page);
      if (!tasks) {
        load(page).catch(() => {});
        rows.push(placeholderRow(index));
      } else if (tasks[index - page * PAGE]) {
        const [key, entry] = rowFor(tasks[index - page * PAGE], index);
        next.set(key, entry);
        rows.push(entry.row);
      }
    }
    rows.push(below);
    setRows(above, first);
    setRows(below, total - last - 1);
    rendered = next;
    const current = [...body.children];
    if (current.length !== rows.length || current.some((row, i) => row !== rows[i])) {
      // Keep the keyboard where it was: a focused link moves to the same task's new row.
      const focused = body.contains(document.activeElement)
        ? document.activeElement.closest("tr")?.dataset.taskId
        : null;
      body.replaceChildren(...rows);
      if (focused && !body.contains(document.activeElement)) {
        body.querySelector(`tr[data-task-id="${CSS.escape(focused)}"] a`)?.focus();
      }
    }
  }

  function schedule() {
    if (frame === null) frame = requestAnimationFrame(render);
  }

  function pagesInView() {
    const [first, last] = visibleRange();
    const wanted = new Set();
    for (let page = Math.floor(first / PAGE); page <= Math.floor(Math.max(first, last) / PAGE); page += 1) {
      wanted.add(page);
    }
    return wanted;
  }

  // Every few seconds: the pages in view are asked again, the others forgotten (a page
  // scrolled to meanwhile is kept: it is fresh).
  async function refresh() {
    const asked = generation;
    const answers = await Promise.all(
      [...pagesInView()].map((page) => call(query(page)).then((answer) => [page, answer])),
    );
    if (asked !== generation) return;
    for (const [page, answer] of answers) {
      total = answer.count;
      pages.set(page, answer.tasks);
    }
    const inView = pagesInView();
    for (const page of [...pages.keys()]) if (!inView.has(page)) pages.delete(page);
    schedule();
  }

  let debounce = null;
  function filtersChanged() {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      filters.name = nameInput.value.trim();
      filters.status = statusSelect.value;
      generation += 1;
      pages = new Map();
      loading.clear();
      total = null;
      scroller.scrollTop = 0;
      count.textContent = "Loading…";
      load(0).catch((error) => {
        count.textContent = `Could not load the tasks: ${error.message}`;
      });
    }, 250);
  }
  nameInput.addEventListener("input", filtersChanged);
  statusSelect.addEventListener("change", filtersChanged);
  scroller.addEventListener("scroll", schedule, { passive: true });
  window.addEventListener("resize", schedule);

  const stop = every(REFRESH_MS, async () => {
    try {
      await refresh();
    } catch (error) {
      // Nothing shown yet: say why where the list would be (a key without tasks/index).
      if (total === null) count.textContent = `Could not load the tasks: ${error.message}`;
      throw error;
    }
  });
  return {
    destroy() {
      stop();
      clearTimeout(debounce);
      generation += 1;
      window.removeEventListener("resize", schedule);
      if (frame !== null) cancelAnimationFrame(frame);
    },
  };
}
