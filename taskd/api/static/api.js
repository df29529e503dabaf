// The v2 API as the page uses it: every call carries the Authorization header the person
// signed in with (kept in this tab's sessionStorage), never a cookie (credentials: "omit"
// also keeps the browser from asking for a password itself after a 401).

const STORAGE_KEY = "taskd.authorization";
const BASE = "/api/v2";

/** An answer that was not 2xx: its status and the API's message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The Authorization header this tab signed in with, or null. */
export function authorization() {
  return sessionStorage.getItem(STORAGE_KEY);
}

/** Keep `header` for this tab; null forgets it (signing out). */
export function setAuthorization(header) {
  if (header) sessionStorage.setItem(STORAGE_KEY, header);
  else sessionStorage.removeItem(STORAGE_KEY);
}

/** The header for an API key or a JWT. */
export function bearer(token) {
  return `Bearer ${token.trim()}`;
}

/** The header for a user's name and password (UTF-8, as the server decodes it). */
export function basic(user, password) {
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return `Basic ${btoa(binary)}`;
}

// Called with every 401, so the page can ask for a sign-in again.
let onUnauthorized = () => {};
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

function headers(extra) {
  const result = { Accept: "application/json", ...extra };
  const header = authorization();
  if (header) result.Authorization = header;
  return result;
}

function messageOf(body, status) {
  if (body && typeof body === "object") {
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.messages) && body.messages.length) return body.messages.join("; ");
  }
  return `the API answered ${status}`;
}

/** Call the API; resolve to the JSON answer, reject with ApiError. */
export async function call(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, credentials: "omit", cache: "no-store", headers: headers() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(BASE + path, init);
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) {
    if (response.status === 401) onUnauthorized();
    throw new ApiError(response.status, messageOf(parsed, response.status));
  }
  return parsed;
}

/**
 * Read a server-sent event stream with fetch (EventSource cannot send the Authorization
 * header). Yields {event, data, id}; `data` parsed as JSON. Ends when the server ends the
 * stream or `signal` aborts.
 */
export async function* events(path, signal) {
  const response = await fetch(BASE + path, {
    signal,
    credentials: "omit",
    cache: "no-store",
    headers: headers({ Accept: "text/event-stream" }),
  });
  if (!response.ok) {
    if (response.status === 401) onUnauthorized();
    throw new ApiError(response.status, `the log stream answered ${response.status}`);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const parsed = parseEvent(block);
        if (parsed) yield parsed;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseEvent(block) {
  let event = "message";
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // a keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  if (!data.length) return null;
  return { event, id, data: JSON.parse(data.join("\n")) };
}
