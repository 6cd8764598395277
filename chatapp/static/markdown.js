// A small, safe Markdown renderer for chat text from models and users.
//
// It never parses HTML: every piece of input text enters the page through a text node
// (textContent / createTextNode), so "<script>" or "<img onerror=...>" in a message is shown as
// those characters, exactly as if all HTML had been escaped first. Markdown syntax is then
// recognised on that text: fenced code blocks, inline code, bold, italic, headings, lists,
// block quotes, rules, paragraphs (single newlines kept as line breaks) and links, the latter
// only for http(s) URLs, opened with rel="noopener noreferrer". Unfinished syntax (a reply
// still streaming) renders as plain text until it is closed; an unclosed code fence runs to
// the end, so code streams into its block.

const SAFE_SCHEMES = new Set(["http:", "https:"]);

/** The URL as a string if it is an absolute http(s) URL, else null. */
export function safeUrl(raw) {
  if (typeof raw !== "string" || !/^https?:\/\//i.test(raw.trim())) return null;
  try {
    const url = new URL(raw.trim());
    return SAFE_SCHEMES.has(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}

/** HTML-escaped text, for the rare place a string (not a node) is needed. */
export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  }[c]));
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- inline ---------------------------------------------------------------------------------

// Tried at each position; the earliest match wins (ties: the order here).
const INLINE = [
  { kind: "code", re: /(`+)([\s\S]+?)\1(?!`)/ },
  { kind: "link", re: /\[([^\]\n]+)\]\(([^()\s]+)\)/ },
  { kind: "autolink", re: /\bhttps?:\/\/[^\s<>()\[\]"'`]+[^\s<>()\[\]"'`.,;:!?*_]/i },
  { kind: "strong", re: /\*\*(?=\S)([\s\S]*?\S)\*\*|\b__(?=\S)([\s\S]*?\S)__\b/ },
  { kind: "em", re: /\*(?=[^\s*])([^*]*?[^\s*])\*|\b_(?=[^\s_])([^_]*?[^\s_])_\b/ },
  { kind: "strike", re: /~~(?=\S)([\s\S]*?\S)~~/ },
];

/** Append ``text`` to ``parent`` as inline Markdown. */
export function renderInline(text, parent) {
  let rest = text;
  while (rest) {
    let best = null;
    for (const rule of INLINE) {
      const m = rule.re.exec(rest);
      if (m && (best === null || m.index < best.m.index)) best = { rule, m };
    }
    if (!best) {
      appendText(parent, rest);
      return;
    }
    const { rule, m } = best;
    if (m.index > 0) appendText(parent, rest.slice(0, m.index));
    const consumed = m[0];
    if (rule.kind === "code") {
      parent.appendChild(el("code", null, m[2].replace(/^ (.*) $/s, "$1")));
    } else if (rule.kind === "link") {
      const href = safeUrl(m[2]);
      if (href) {
        const a = link(href);
        renderInline(m[1], a);
        parent.appendChild(a);
      } else {
        appendText(parent, consumed); // not http(s): shown as typed
      }
    } else if (rule.kind === "autolink") {
      const href = safeUrl(consumed);
      if (href) {
        const a = link(href);
        a.textContent = consumed;
        parent.appendChild(a);
      } else {
        appendText(parent, consumed);
      }
    } else {
      const tag = { strong: "strong", em: "em", strike: "del" }[rule.kind];
      const node = el(tag);
      renderInline(m[1] !== undefined ? m[1] : m[2], node);
      parent.appendChild(node);
    }
    rest = rest.slice(m.index + consumed.length);
  }
}

function link(href) {
  const a = el("a");
  a.href = href;
  a.rel = "noopener noreferrer";
  a.target = "_blank";
  return a;
}

/** Text with its newlines as <br> (chat text means its line breaks). */
function appendText(parent, text) {
  const lines = text.split("\n");
  lines.forEach((line, i) => {
    if (i) parent.appendChild(el("br"));
    if (line) parent.appendChild(document.createTextNode(line));
  });
}

// --- blocks ---------------------------------------------------------------------------------

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^\n]*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const BULLET = /^(\s*)([-*+])\s+(.*)$/;
const ORDERED = /^(\s*)(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;

function isBlockStart(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || BULLET.test(line) ||
    ORDERED.test(line) || QUOTE.test(line);
}

/** A DocumentFragment with ``text`` rendered as Markdown. */
export function renderMarkdown(text) {
  const frag = document.createDocumentFragment();
  renderBlocks(String(text ?? "").replace(/\r\n?/g, "\n").split("\n"), frag);
  return frag;
}

function renderBlocks(lines, parent) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) { i++; continue; }

    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[1];
      const body = [];
      i++;
      while (i < lines.length && !new RegExp(`^ {0,3}${marker[0]}{${marker.length},}\\s*$`).test(lines[i])) {
        body.push(lines[i]);
        i++;
      }
      i++; // the closing fence (or the end)
      parent.appendChild(codeBlock(body.join("\n"), fence[2]));
      continue;
    }

    const heading = HEADING.exec(line);
    if (heading) {
      const level = Math.min(heading[1].length + 2, 6); // h3..h6: a message is part of the page
      const h = el(`h${level}`, "md-h" + heading[1].length);
      renderInline(heading[2], h);
      parent.appendChild(h);
      i++;
      continue;
    }

    if (RULE.test(line)) {
      parent.appendChild(el("hr"));
      i++;
      continue;
    }

    if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && QUOTE.test(lines[i])) {
        body.push(QUOTE.exec(lines[i])[1]);
        i++;
      }
      const quote = el("blockquote");
      renderBlocks(body, quote);
      parent.appendChild(quote);
      continue;
    }

    if (BULLET.test(line) || ORDERED.test(line)) {
      i = renderList(lines, i, parent);
      continue;
    }

    const para = [line];
    i++;
    while (i < lines.length && lines[i].trim() && !isBlockStart(lines[i])) {
      para.push(lines[i]);
      i++;
    }
    const p = el("p");
    renderInline(para.join("\n"), p);
    parent.appendChild(p);
  }
}

function listItem(line) {
  const b = BULLET.exec(line);
  if (b) return { indent: b[1].length, ordered: false, text: b[3] };
  const o = ORDERED.exec(line);
  if (o) return { indent: o[1].length, ordered: true, text: o[3], start: Number(o[2]) };
  return null;
}

/** A list starting at lines[i]; items indented further than the first nest. Returns the next index. */
function renderList(lines, i, parent) {
  const first = listItem(lines[i]);
  const list = el(first.ordered ? "ol" : "ul");
  if (first.ordered && first.start !== 1) list.start = first.start;
  let current = null;
  while (i < lines.length) {
    const line = lines[i];
    const item = listItem(line);
    if (item && item.indent <= first.indent + 1) {
      if (item.ordered !== first.ordered) break;
      current = el("li");
      renderInline(item.text, current);
      list.appendChild(current);
      i++;
      continue;
    }
    if (item && item.indent > first.indent + 1 && current) {
      i = renderList(lines, i, current); // a nested list
      continue;
    }
    if (line.trim() && current && /^\s+\S/.test(line) && !FENCE.test(line)) {
      current.appendChild(el("br")); // a continuation line of the item
      renderInline(line.trim(), current);
      i++;
      continue;
    }
    if (!line.trim() && i + 1 < lines.length) {
      const next = listItem(lines[i + 1]);
      if (next && next.ordered === first.ordered && next.indent <= first.indent + 1) { i++; continue; }
    }
    break;
  }
  parent.appendChild(list);
  return i;
}

function codeBlock(code, lang) {
  const wrap = el("div", "code-block");
  const bar = el("div", "code-bar");
  bar.appendChild(el("span", "code-lang", lang || "code"));
  const copy = el("button", "code-copy", "Copy");
  copy.type = "button";
  copy.setAttribute("aria-label", `Copy ${lang || "code"} to the clipboard`);
  copy.addEventListener("click", () => {
    const done = () => { copy.textContent = "Copied"; setTimeout(() => { copy.textContent = "Copy"; }, 1500); };
    if (navigator.clipboard) navigator.clipboard.writeText(code).then(done, () => { copy.textContent = "Copy failed"; });
  });
  bar.appendChild(copy);
  wrap.appendChild(bar);
  const pre = el("pre");
  const codeEl = el("code", lang ? `language-${lang.replace(/[^\w+#.-]/g, "")}` : null, code);
  pre.appendChild(codeEl);
  pre.tabIndex = 0; // scrollable: reachable with the keyboard
  wrap.appendChild(pre);
  return wrap;
}
