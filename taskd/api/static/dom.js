// Building the page's elements. Every value from the API goes in as text (a Text node or
// textContent), never parsed as HTML: the page builds every element itself.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(element, props, children) {
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.setAttribute("class", value);
    else if (name === "text") element.textContent = String(value);
    else if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

/** Append children: nodes as they are, anything else as text; null and undefined skipped. */
export function append(element, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** An HTML element: h("a", {href: "#/"}, "text", otherNode). */
export function h(tag, props, ...children) {
  return fill(document.createElement(tag), props, children);
}

/** An SVG element (attributes set as given, children as for h). */
export function s(tag, props, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), props, children);
}

/** Replace every child of `element`. */
export function replace(element, ...children) {
  element.replaceChildren();
  return append(element, children);
}

/** Say `text` to screen readers (and show it) in the page's status line. */
export function announce(text, isError = false) {
  const line = document.getElementById("status");
  if (!line) return;
  line.textContent = text;
  line.classList.toggle("error", isError);
}
