// Schedules, times and durations in words. Pure functions: tested in the browser.

const DAY_SHORT = {
  monday: "Mon", tuesday: "Tue", wednesday: "Wed", thursday: "Thu",
  friday: "Fri", saturday: "Sat", sunday: "Sun",
  mon: "Mon", tue: "Tue", wed: "Wed", thu: "Thu", fri: "Fri", sat: "Sat", sun: "Sun",
};

const pad = (n) => String(n).padStart(2, "0");

function plural(count, unit) {
  return count === 1 ? `every ${unit}` : `every ${count} ${unit}s`;
}

/** Seconds as the interval a person would say: 300 -> "every 5 minutes". */
export function intervalWords(seconds) {
  if (seconds % 86400 === 0) return plural(seconds / 86400, "day");
  if (seconds % 3600 === 0) return plural(seconds / 3600, "hour");
  if (seconds % 60 === 0) return plural(seconds / 60, "minute");
  return plural(seconds, "second");
}

function listOf(values, show = String) {
  return values.map(show).join(", ");
}

function calendarWords(schedule) {
  const { hours, minutes, weekdays, days_of_month: days } = schedule;
  let when;
  if (hours && minutes && hours.length * minutes.length <= 6) {
    when = listOf(hours.flatMap((hour) => minutes.map((minute) => `${pad(hour)}:${pad(minute)}`)));
  } else if (hours && minutes) {
    when = `minutes ${listOf(minutes)} of hours ${listOf(hours)}`;
  } else if (minutes) {
    when = `every hour at ${listOf(minutes, (m) => `:${pad(m)}`)}`;
  } else if (hours) {
    when = `every minute of hours ${listOf(hours)}`;
  } else {
    when = "every minute";
  }
  const parts = [when];
  if (days) parts.push(`on day ${listOf(days)} of the month`);
  if (weekdays) parts.push(`on ${listOf(weekdays, (d) => DAY_SHORT[String(d).toLowerCase()] || d)}`);
  return parts.join(" ");
}

const CRON_NUMBER = /^\d+$/;

function cronWords(expression) {
  const fields = String(expression).trim().split(/\s+/);
  if (fields.length !== 5) return `cron ${expression}`;
  const [minute, hour, dom, month, dow] = fields;
  const parts = [];
  if (CRON_NUMBER.test(minute) && CRON_NUMBER.test(hour)) {
    parts.push(`${pad(hour)}:${pad(minute)}`);
  } else {
    if (minute === "*") parts.push("every minute");
    else if (/^\*\/\d+$/.test(minute)) parts.push(intervalWords(60 * Number(minute.slice(2))));
    else parts.push(`at minute ${minute}`);
    if (hour !== "*") parts.push(`during hours ${hour}`);
  }
  if (dom !== "*") parts.push(`on day ${dom}`);
  if (month !== "*") parts.push(`in month ${month}`);
  if (dow !== "*") {
    const days = dow.split(/([-,])/).map((part) => DAY_SHORT[part.toLowerCase()] || part).join("");
    parts.push(`on ${days}`);
  }
  return parts.join(" ");
}

/** One schedule in words: {"hours": [2], "minutes": [30], "timezone": "Europe/Berlin"}
 * -> "02:30 Europe/Berlin". */
export function scheduleWords(schedule) {
  if (!schedule || typeof schedule !== "object") return "unknown schedule";
  let words;
  if ("interval_sec" in schedule) words = intervalWords(Number(schedule.interval_sec));
  else if ("cron" in schedule) words = cronWords(schedule.cron);
  else words = calendarWords(schedule);
  return schedule.timezone ? `${words} ${schedule.timezone}` : words;
}

/** A task's schedules in words; "once" or "when asked" for a task without any. */
export function taskScheduleWords(task) {
  const schedules = Array.isArray(task.schedules) ? task.schedules : [];
  if (schedules.length) return schedules.map(scheduleWords).join("; ");
  return task.next_run_at ? "once" : "when asked";
}

/** An instant in the browser's time zone: "2026-12-03 16:05". */
export function localTime(iso, withSeconds = false) {
  if (!iso) return "";
  const t = new Date(iso);
  const date = `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())}`;
  const time = `${pad(t.getHours())}:${pad(t.getMinutes())}`;
  return `${date} ${time}${withSeconds ? `:${pad(t.getSeconds())}` : ""}`;
}

/** How far `iso` is from `now`: "in 4 min", "2 h ago", "now". */
export function relative(iso, now = Date.now()) {
  if (!iso) return "";
  const seconds = Math.round((new Date(iso).getTime() - now) / 1000);
  const size = Math.abs(seconds);
  let amount;
  if (size < 45) return "now";
  if (size < 3600) amount = `${Math.round(size / 60)} min`;
  else if (size < 86400 * 2) amount = `${Math.round(size / 3600)} h`;
  else amount = `${Math.round(size / 86400)} days`;
  return seconds > 0 ? `in ${amount}` : `${amount} ago`;
}

/** Seconds as a duration: 3.2 s, 2 min 5 s, 1 h 2 min. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

/** How long an execution ran (until now while it runs). */
export function runDuration(execution, now = Date.now()) {
  if (!execution || !execution.started_at) return null;
  const end = execution.finished_at ? new Date(execution.finished_at).getTime() : now;
  return (end - new Date(execution.started_at).getTime()) / 1000;
}

/** What a daylight-saving mark of a next run means. */
export function dstWords(mark) {
  switch (mark) {
    case "gap_shifted": return "moved: that local time does not exist that day (clocks go forward)";
    case "fold_first": return "first of the two times this local time occurs (clocks go back)";
    case "fold_second": return "second of the two times this local time occurs (clocks go back)";
    default: return mark ? String(mark) : "";
  }
}
