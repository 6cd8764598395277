"""The web page at / in a real headless Chromium against a live loopback server with a worker.

Chromium comes from the system (Debian's ``chromium`` package; .ci/run installs it), never from
``playwright install``. One browser per module; each test gets a fresh context (its own
localStorage) and a fresh user. ``CHATAPP_SCREENSHOTS=1`` also saves docs/screenshots/*.png.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import types
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
import requests

from chatapp import hookimpl
from chatapp.models import ChatRequest, Chunk, Cost, GenerationContext, GenerationResult, ModelInfo, Provider, Usage
from tests.conftest import FAST, LiveServer, app_with_worker, auth

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCREENSHOTS = os.environ.get("CHATAPP_SCREENSHOTS") == "1"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI must run the browser tests (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium): the web page tests need a real browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--no-first-run", "--disable-extensions"])
        yield chromium
        chromium.close()


@dataclass
class QueuedGpuProvider(Provider):
    """Waits in an upstream queue first (like RunPod's IN_QUEUE), then writes; priced per reply."""

    wait_s: float = 0.6

    def stream(self, request: ChatRequest, context: GenerationContext) -> Iterator[Chunk]:
        yield Chunk(status="provider_queued")
        if context.cancelled.wait(self.wait_s):
            return
        yield Chunk(status="generating")
        for word in ["Warm", " GPU", " says", " hi."]:
            context.cancelled.wait(0.05)
            yield Chunk(text=word)
        yield Chunk(usage=Usage(5, 4), finish_reason="stop")

    def price(self, request: ChatRequest, result: GenerationResult) -> Cost:
        return Cost(1234, {"flat": True})


queued_gpu = types.ModuleType("queued_gpu")
queued_gpu.register_providers = hookimpl(lambda: [QueuedGpuProvider(
    id="queued-gpu", name="Queued GPU (test)", models=[ModelInfo("q-1")], default_model="q-1")])


@pytest.fixture(scope="module")
def server(redis_server: Any) -> Iterator[Any]:
    tag = uuid.uuid4().hex[:8]
    config = {"TESTING": True, "REDIS_URL": redis_server.url, "KEY_PREFIX": f"tweb{tag}:",
              "QUEUE_NAME": f"chat-web{tag}", **FAST}
    with app_with_worker(config, extra_plugins=(queued_gpu,)) as (app, ext):
        live = LiveServer(app)
        try:
            yield types.SimpleNamespace(app=app, ext=ext, url=live.url)
        finally:
            live.stop()


@pytest.fixture()
def echo_delay(server: Any) -> Iterator[Any]:
    """Set the echo provider's delay between words (slow enough to watch, stop and reload)."""
    provider = server.ext.catalog.providers["echo"]

    def set_delay(seconds: float) -> None:
        provider.delay_s = seconds

    yield set_delay
    provider.delay_s = 0.0


class Session:
    """One browser context signed in as a fresh user; records what must never happen."""

    def __init__(self, browser: Any, server: Any, viewport: dict[str, int] = DESKTOP, **context: Any) -> None:
        self.server = server
        self.key = server.ext.users.create(f"web-{uuid.uuid4().hex[:10]}")[1]
        self.context = browser.new_context(viewport=viewport, accept_downloads=True, **context)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        self.urls: list[str] = []
        self.page.on("pageerror", lambda err: self.problems.append(f"page error: {err}"))
        self.page.on("console", self._console)
        self.page.on("dialog", self._dialog)
        self.page.on("request", lambda req: self.urls.append(req.url))
        self.page.on("websocket", lambda ws: self.urls.append(ws.url))

    def _console(self, message: Any) -> None:
        text = message.text
        if "Invalid frame header" in text:
            return  # werkzeug's dev server only: flask-sock writes an HTTP response after the close frame there
        if "Content Security Policy" in text or "differs from the stored reply" in text:
            self.problems.append(f"console {message.type}: {text}")
        elif message.type == "error" and "Failed to load resource" not in text:
            self.problems.append(f"console error: {text}")

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, path: str = "/") -> Any:
        self.page.goto(self.server.url + path)
        return self.page

    def sign_in(self) -> Any:
        page = self.open(f"/#key={self.key}")
        page.wait_for_selector("#app:not([hidden])")
        page.wait_for_selector("#connection[data-status=up]", state="attached")
        return page

    def send(self, text: str) -> Any:
        """Type and press Enter; returns the locator of the new reply (the last one)."""
        page = self.page
        before = page.locator("#messages .message.assistant:not(.greeting)").count()
        page.fill("#composer-input", text)
        page.press("#composer-input", "Enter")
        page.wait_for_function(
            "n => document.querySelectorAll('#messages .message.assistant:not(.greeting)').length > n", arg=before)
        return page.locator("#messages .message.assistant:not(.greeting)").last

    def wait_state(self, reply: Any, *states: str, timeout: float = 20_000) -> str:
        selector = ", ".join(f"[data-state={s}]" for s in states)
        reply.page.wait_for_function(
            "([el, sel]) => el.matches(sel)", arg=[reply.element_handle(), selector], timeout=timeout)
        return reply.get_attribute("data-state")

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        return requests.request(method, self.server.url + "/api/v1" + path, headers=auth(self.key), timeout=10,
                                **kwargs)

    def stored(self, reply: Any) -> dict[str, Any]:
        mid = reply.get_attribute("data-id")
        return self.server.ext.store.message_view(self.server.ext.store.message(
            self.server.ext.users.authenticate(self.key).id, mid))

    def check(self) -> None:
        assert not self.problems, self.problems
        assert not self.dialogs, f"a dialog opened: {self.dialogs}"
        leaked = [u for u in self.urls if self.key in u]
        assert not leaked, f"the API key went into a URL: {leaked}"

    def close(self) -> None:
        self.context.close()


@pytest.fixture()
def session(browser: Any, server: Any) -> Iterator[Session]:
    s = Session(browser, server)
    yield s
    s.close()


def words(n: int, stem: str = "word") -> str:
    return " ".join(f"{stem}{i}" for i in range(n))


def watch_newest_reply(page: Any) -> None:
    """Record what the newest reply shows after every change of the DOM (window.__seen)."""
    page.evaluate("""() => {
        window.__seen = {lengths: [], badges: []};
        new MutationObserver(() => {
            const reply = [...document.querySelectorAll('#messages .message.assistant:not(.greeting)')].pop();
            if (!reply) return;
            window.__seen.lengths.push(reply.querySelector('.bubble').textContent.length);
            const badge = reply.querySelector('.state-badge');
            if (badge) window.__seen.badges.push(badge.textContent);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }""")


def eventually(predicate: Any, timeout: float = 5) -> bool:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return True


def bubble_text(reply: Any) -> str:
    return reply.locator(".bubble").evaluate("el => el.textContent")


def screenshot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        os.makedirs(os.path.join(ROOT, "docs", "screenshots"), exist_ok=True)
        page.screenshot(path=os.path.join(ROOT, "docs", "screenshots", name))


# --- the page itself ----------------------------------------------------------------------------

def test_page_and_static_files_are_served_with_a_strict_policy(server):
    page = requests.get(server.url + "/", timeout=10)  # no key needed
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "connect-src 'self' ws: wss:", "object-src 'none'",
                      "frame-ancestors 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    html = page.text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "no inline scripts"
    assert not re.search(r"\son\w+\s*=", html), "no inline event handlers"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "nothing from another origin"
    for name, mime in (("app.js", "javascript"), ("markdown.js", "javascript"), ("style.css", "text/css")):
        static = requests.get(f"{server.url}/static/{name}", timeout=10)
        assert static.status_code == 200 and mime in static.headers["Content-Type"], name
        assert static.headers["X-Content-Type-Options"] == "nosniff"
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", static.text), f"{name} loads nothing from elsewhere"
    api = requests.get(server.url + "/healthz", timeout=10)
    assert "Content-Security-Policy" not in api.headers  # only the page's responses carry it


def test_sign_in_from_the_fragment_then_the_fragment_is_gone(session):
    page = session.sign_in()
    assert page.evaluate("location.hash") == "" and "#key" not in page.url and session.key not in page.url
    assert page.evaluate("localStorage.getItem('chatapp.apiKey')") == session.key
    assert page.locator(".message.greeting").inner_text().endswith("Hi! How can I help?")
    page.reload()  # the key is remembered
    page.wait_for_selector("#connection[data-status=up]", state="attached")
    page.click("#signout-button")
    page.wait_for_selector("#signin:not([hidden])")
    assert page.evaluate("localStorage.getItem('chatapp.apiKey')") is None
    session.check()


def test_sign_in_by_pasting_a_key(session):
    page = session.open("/")
    page.wait_for_selector("#signin:not([hidden])")
    page.fill("#signin-key", "ck_not-a-real-key")
    page.press("#signin-key", "Enter")
    page.wait_for_selector("#signin-error:not([hidden])")
    assert "not accepted" in page.inner_text("#signin-error")
    page.fill("#signin-key", session.key)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#connection[data-status=up]", state="attached")
    assert page.evaluate("localStorage.getItem('chatapp.apiKey')") == session.key
    session.check()


# --- streaming, stop, reload, reconnect ---------------------------------------------------------

def test_tokens_arrive_progressively_and_match_the_stored_reply(session, echo_delay):
    echo_delay(0.03)
    page = session.sign_in()
    text = words(50)
    watch_newest_reply(page)
    reply = session.send(text)
    assert session.wait_state(reply, "done") == "done"
    seen = page.evaluate("window.__seen")
    partial = sorted({n for n in seen["lengths"] if 0 < n < len(f"Echo (assistant): {text}")})
    assert len(partial) >= 5, f"the reply should grow in the DOM while streaming, saw lengths {seen['lengths']}"
    assert "Generating…" in seen["badges"]
    stored = session.stored(reply)
    assert bubble_text(reply) == stored["content"] == f"Echo (assistant): {text}"
    assert reply.locator(".cost").inner_text() == "$0"
    assert page.locator("#chat-cost").inner_text() == "Total $0"
    assert re.fullmatch(r"#c_[\w-]+", page.evaluate("location.hash"))  # a reload reopens this conversation
    session.check()


def test_stop_ends_the_reply_cancelled_and_shorter(session, echo_delay):
    echo_delay(0.05)
    page = session.sign_in()
    text = words(80)
    reply = session.send(text)
    page.wait_for_function("el => el.textContent.length > 40", arg=reply.locator(".bubble").element_handle())
    assert page.locator("#stop-button").is_visible()
    page.click("#stop-button")
    assert session.wait_state(reply, "cancelled", "done") == "cancelled"
    assert reply.locator(".state-badge").inner_text() == "Stopped"
    stored = session.stored(reply)
    assert stored["state"] == "cancelled" and stored["finish_reason"] == "cancelled"
    assert 0 < len(stored["content"]) < len(f"Echo (assistant): {text}")
    assert bubble_text(reply) == stored["content"]
    assert page.locator("#stop-button").is_hidden()
    session.check()


def test_reload_mid_reply_resumes_without_lost_or_doubled_text(session, echo_delay):
    echo_delay(0.04)
    page = session.sign_in()
    text = words(90, "tok")
    reply = session.send(text)
    page.wait_for_function("el => el.textContent.includes('tok12 ')", arg=reply.locator(".bubble").element_handle())
    page.reload()
    page.wait_for_selector("#connection[data-status=up]", state="attached")
    reply = page.locator("#messages .message.assistant:not(.greeting)").last
    assert reply.get_attribute("data-state") in ("generating", "queued"), "reloaded before the reply finished"
    assert session.wait_state(reply, "done") == "done"
    stored = session.stored(reply)
    assert bubble_text(reply) == stored["content"] == f"Echo (assistant): {text}"
    session.check()


def test_server_restart_close_reconnects_with_a_new_ticket_and_resumes(session, echo_delay, server):
    echo_delay(0.04)
    page = session.sign_in()
    text = words(70, "re")
    reply = session.send(text)
    page.wait_for_function("el => el.textContent.includes('re10 ')", arg=reply.locator(".bubble").element_handle())
    server.ext.sockets.restart_all()  # what SIGTERM does: close 1012, clients reconnect and resume
    assert session.wait_state(reply, "done") == "done"
    tickets = [u for u in session.urls if u.endswith("/api/v1/ws-tickets")]
    sockets = [u for u in session.urls if u.startswith("ws://")]
    assert len(tickets) >= 2 and len(sockets) >= 2 and len(set(sockets)) == len(sockets)  # a fresh ticket each time
    assert bubble_text(reply) == session.stored(reply)["content"] == f"Echo (assistant): {text}"
    session.check()


def test_code_blocks_render_with_a_copy_button(session, echo_delay):
    echo_delay(0.01)
    page = session.sign_in()
    code = "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"
    reply = session.send(f"Write a function for Fibonacci numbers, please.\n\n```python\n{code}\n```\n\n"
                         "It runs in **O(n)** time; see https://en.wikipedia.org/wiki/Fibonacci_sequence")
    assert session.wait_state(reply, "done") == "done"
    assert reply.locator("pre code.language-python").inner_text() == code
    assert reply.locator(".code-copy").evaluate("el => el.tagName") == "BUTTON"
    assert reply.locator("a").get_attribute("rel") == "noopener noreferrer"
    screenshot(page, "chat.png")
    session.check()


def test_waiting_for_gpu_state_and_costs(session):
    conv = session.api("POST", "/conversations", json={"title": "GPU queue", "provider": "queued-gpu"}).json()
    page = session.sign_in()
    page.click(f"#conversation-list .conversation-item[data-id='{conv['id']}'] .open")
    page.wait_for_selector("#chat-title >> text=GPU queue")
    watch_newest_reply(page)
    reply = session.send("hello")
    assert session.wait_state(reply, "done") == "done"
    seen = page.evaluate("window.__seen.badges")
    badges = [b for i, b in enumerate(seen) if i == 0 or b != seen[i - 1]]
    assert badges == ["Queued", "Waiting for GPU", "Generating…"], badges
    assert bubble_text(reply) == "Warm GPU says hi."
    reply.locator(".cost >> text=$0.001234").wait_for()
    page.wait_for_selector("#chat-cost >> text=Total $0.001234")
    reply = session.send("again")
    assert session.wait_state(reply, "done") == "done"
    page.wait_for_selector("#chat-cost >> text=Total $0.002468")
    session.check()


# --- safety, keyboard, phone --------------------------------------------------------------------

XSS = ('<img src=x onerror="window.__xss=1;alert(1)"> <script>window.__xss=2;alert(2)</script> '
       '[click me](javascript:alert(3)) <a href="javascript:alert(4)">link</a> **bold**')


def test_html_in_user_text_and_replies_is_shown_as_text(session):
    page = session.sign_in()
    reply = session.send(XSS)
    assert session.wait_state(reply, "done") == "done"
    user = page.locator("#messages .message.user").last
    assert user.locator(".bubble").inner_text() == XSS
    assert "<img src=x onerror=" in bubble_text(reply) and "<script>" in bubble_text(reply)
    assert reply.locator("strong").inner_text() == "bold"  # Markdown still works around it
    counts = page.evaluate("""() => ({
        img: document.querySelectorAll('#messages img').length,
        script: document.querySelectorAll('#messages script').length,
        js: document.querySelectorAll('#messages a[href^="javascript"]').length,
        handlers: [...document.querySelectorAll('#messages *')].filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
        xss: window.__xss === undefined ? null : window.__xss })""")
    assert counts == {"img": 0, "script": 0, "js": 0, "handlers": 0, "xss": None}
    page.reload()  # the stored text renders the same way
    page.wait_for_selector("#messages .message.assistant:not(.greeting)[data-state=done]")
    assert page.evaluate("document.querySelectorAll('#messages img, #messages script').length") == 0
    assert page.evaluate("window.__xss === undefined")
    session.check()


def test_markdown_renderer_escapes_first_and_links_only_http(session):
    page = session.sign_in()
    out = page.evaluate("""async () => {
        const md = await import('/static/markdown.js');
        const render = (t) => { const d = document.createElement('div'); d.append(md.renderMarkdown(t)); return d; };
        const a = render('# Title\\n\\nSome *em* and **strong** and `<b>code</b>`\\n\\n```js\\nif (a < b) alert("x")\\n```\\n\\n' +
                         '- one\\n- two\\n\\n1. first\\n2. second\\n\\n[ok](https://example.com/x?a=1) [bad](javascript:alert(1)) ' +
                         '[data](data:text/html,hi) https://example.org/y');
        return {
            h: a.querySelector('h3').textContent,
            em: a.querySelector('em').textContent, strong: a.querySelector('strong').textContent,
            inline: a.querySelector('p code').textContent,
            code: a.querySelector('pre code').textContent, lang: a.querySelector('pre code').className,
            ul: a.querySelectorAll('ul li').length, ol: a.querySelectorAll('ol li').length,
            links: [...a.querySelectorAll('a')].map(l => [l.getAttribute('href'), l.rel, l.textContent]),
            b: a.querySelectorAll('b').length,
            text: a.textContent,
        };
    }""")
    assert out["h"] == "Title" and out["em"] == "em" and out["strong"] == "strong"
    assert out["inline"] == "<b>code</b>" and out["b"] == 0
    assert out["code"] == 'if (a < b) alert("x")' and out["lang"] == "language-js"
    assert out["ul"] == 2 and out["ol"] == 2
    assert out["links"] == [["https://example.com/x?a=1", "noopener noreferrer", "ok"],
                            ["https://example.org/y", "noopener noreferrer", "https://example.org/y"]]
    assert "[bad](javascript:alert(1))" in out["text"] and "[data](data:text/html,hi)" in out["text"]
    session.check()


def test_keyboard_only_send_with_shift_enter_newline(session):
    page = session.sign_in()
    page.evaluate("document.activeElement && document.activeElement.blur()")
    for _ in range(40):  # Tab from the top of the page to the message box
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "composer-input":
            break
    else:
        pytest.fail("the message box cannot be reached with Tab")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    page.keyboard.press("Enter")
    user = page.locator("#messages .message.user").last
    user.wait_for()
    assert user.locator(".bubble").inner_text() == "line one\nline two"
    assert page.input_value("#composer-input") == ""
    reply = page.locator("#messages .message.assistant:not(.greeting)").last
    assert session.wait_state(reply, "done") == "done"
    assert session.stored(reply)["content"] == "Echo (assistant): line one\nline two"
    # the reply's controls are real buttons, reachable and labelled
    for selector in (".thumb.up", ".thumb.down", ".regenerate"):
        button = reply.locator(selector)
        assert button.evaluate("el => el.tagName") == "BUTTON" and button.get_attribute("aria-label")
    session.check()


def test_phone_layout_is_usable(browser, server):
    s = Session(browser, server, viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        page = s.sign_in()
        assert page.locator("#sidebar").is_hidden() and page.locator("#sidebar-toggle").is_visible()
        reply = s.send("Show me some code:\n\n```python\ndef greet(name):\n    return f'Hello, {name}!'\n```")
        assert s.wait_state(reply, "done") == "done"
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        box = page.locator("#composer-input").bounding_box()
        assert box["y"] + box["height"] <= PHONE["height"] and box["width"] > 200
        assert page.locator("#send-button").is_visible()
        screenshot(page, "phone.png")
        page.click("#sidebar-toggle")
        page.locator("#sidebar").wait_for(state="visible")
        assert page.locator("#sidebar-toggle").get_attribute("aria-expanded") == "true"
        page.locator(".conversation-item .open").first.click()
        page.locator("#sidebar").wait_for(state="hidden")
        s.check()
    finally:
        s.close()


# --- sidebar ------------------------------------------------------------------------------------

def test_sidebar_pages_renames_deletes_and_searches(session):
    for i in range(23):
        assert session.api("POST", "/conversations", json={"title": f"topic {i:02d}"}).status_code == 201
    page = session.sign_in()
    items = page.locator("#conversation-list .conversation-item")
    page.wait_for_function("() => document.querySelectorAll('#conversation-list .conversation-item').length === 20")
    assert items.first.locator(".title").inner_text() == "topic 22"  # newest first
    page.click("#load-more")
    page.wait_for_function("() => document.querySelectorAll('#conversation-list .conversation-item').length === 23")
    assert page.locator("#load-more").is_hidden()

    first = items.first
    cid = first.get_attribute("data-id")
    first.locator(".rename").click()
    page.fill(".rename-input", "Renamed by keyboard")
    page.press(".rename-input", "Enter")
    page.wait_for_selector(f".conversation-item[data-id='{cid}'] .title >> text=Renamed by keyboard")
    assert session.api("GET", f"/conversations/{cid}").json()["title"] == "Renamed by keyboard"

    victim = items.nth(1)
    victim_id = victim.get_attribute("data-id")
    victim.locator(".delete").click()
    page.locator(".confirm-delete").wait_for()
    assert session.api("GET", f"/conversations/{victim_id}").status_code == 200  # nothing happens before confirming
    page.click(".confirm-delete .confirm")
    page.wait_for_selector(f".conversation-item[data-id='{victim_id}']", state="detached")
    assert session.api("GET", f"/conversations/{victim_id}").status_code == 404

    page.fill("#search-input", "topic 07")
    page.wait_for_function("""() => {
        const titles = [...document.querySelectorAll('#conversation-list .title')].map(t => t.textContent);
        return titles.length === 1 && titles[0] === 'topic 07'; }""")
    page.fill("#search-input", "")
    page.wait_for_function("() => document.querySelectorAll('#conversation-list .conversation-item').length >= 20")
    session.check()


def test_search_finds_message_text(session):
    page = session.sign_in()
    found = session.send("Packing list\nremember the zanzibar guidebook")  # titled by its first line
    assert session.wait_state(found, "done") == "done"
    found_id = found.get_attribute("data-id")  # (locators are lazy: "the last reply" changes below)
    page.click("#new-chat")
    other = session.send("something else entirely")
    assert session.wait_state(other, "done") == "done"
    page.fill("#search-input", "ZANZIBAR")
    page.wait_for_function("() => document.querySelectorAll('#conversation-list .conversation-item').length === 1")
    item = page.locator("#conversation-list .conversation-item")
    assert "zanzibar" in item.locator(".snippet").inner_text().lower()
    item.locator(".open").click()
    page.wait_for_selector(f"#messages .message[data-id='{found_id}']")
    assert page.locator("#chat-title").inner_text() == "Packing list"
    session.check()


# --- personas, parts, cache, usage --------------------------------------------------------------

def test_persona_greeting_and_labelled_parts(session):
    page = session.sign_in()
    page.select_option("#persona-select", "tech-mentor-hinglish")
    assert "Namaste" in page.locator(".message.greeting").inner_text()
    assert "Analyze → Think → Answer" in page.inner_text("#persona-description")
    reply = session.send("what is a closure")
    assert session.wait_state(reply, "done") == "done"
    labels = reply.locator(".part .part-label").all_inner_texts()
    assert [x.lower() for x in labels] == ["analyze", "think", "answer"]
    assert reply.locator(".part[data-part=answer]").inner_text().count("what is a closure") == 1
    page.reload()  # the sections come back from the stored text
    page.wait_for_selector("#messages .message.assistant:not(.greeting)[data-state=done] .part")
    reply = page.locator("#messages .message.assistant:not(.greeting)").last
    assert [x.lower() for x in reply.locator(".part .part-label").all_inner_texts()] == ["analyze", "think", "answer"]
    session.check()


def test_cached_badge_cost_and_usage_panel(session):
    page = session.sign_in()
    first = session.send("the same question twice")
    assert session.wait_state(first, "done") == "done"
    assert first.locator(".cached-badge").count() == 0
    page.click("#new-chat")
    second = session.send("the same question twice")
    assert session.wait_state(second, "done") == "done"
    second.locator(".cached-badge").wait_for()
    assert second.locator(".cost").inner_text() == "$0"
    # usage is counted by the worker after the reply ends
    assert eventually(lambda: session.api("GET", "/usage").json()["totals"]["replies"] == 2, timeout=10)
    page.click("#usage-button")
    page.wait_for_selector("#usage-dialog[open] dl")
    body = page.inner_text("#usage-body")
    assert "Spent today" in body and "Spent this month" in body and "Saved by the cache" in body
    assert re.search(r"Cache hit rate\s+50% \(1 of 2\)", body), body
    page.keyboard.press("Escape")
    page.wait_for_function("() => !document.getElementById('usage-dialog').open")
    session.check()


# --- versions, feedback, export ------------------------------------------------------------------

def test_regenerate_and_flip_between_versions(session):
    page = session.sign_in()
    reply = session.send("tell me again")
    assert session.wait_state(reply, "done") == "done"
    first_id = reply.get_attribute("data-id")
    reply.locator(".regenerate").click()
    page.wait_for_function("id => { const r = [...document.querySelectorAll('#messages .message.assistant:not(.greeting)')].pop();"
                           " return r.dataset.id !== id && r.dataset.state === 'done'; }", arg=first_id)
    reply = page.locator("#messages .message.assistant:not(.greeting)").last
    assert reply.locator(".version-label").inner_text() == "2/2"
    second_id = reply.get_attribute("data-id")
    assert bubble_text(reply) == session.stored(reply)["content"]
    reply.locator(".version-prev").click()
    page.wait_for_selector(f"#messages .message[data-id='{first_id}'] .version-label >> text=1/2")
    reply = page.locator("#messages .message.assistant:not(.greeting)").last
    reply.locator(".version-next").click()
    page.wait_for_selector(f"#messages .message[data-id='{second_id}'] .version-label >> text=2/2")
    assert page.locator("#messages .message.assistant:not(.greeting)").count() == 1
    session.check()


def test_thumbs_up_and_down_are_stored(session):
    session.sign_in()
    reply = session.send("rate me")
    assert session.wait_state(reply, "done") == "done"
    for rating, other in (("up", "down"), ("down", "up")):
        reply.locator(f".thumb.{rating}").click()
        assert eventually(lambda: session.stored(reply).get("feedback", {}).get("rating") == rating)
        assert reply.locator(f".thumb.{rating}").get_attribute("aria-pressed") == "true"
        assert reply.locator(f".thumb.{other}").get_attribute("aria-pressed") == "false"
    session.check()


def test_export_downloads_the_conversation(session, echo_delay):
    echo_delay(0.01)
    page = session.sign_in()
    reply = session.send("Here is code:\n\n```python\nprint('hi')\n```\n\nand a **bold** word")
    assert session.wait_state(reply, "done") == "done"
    cid = page.evaluate("location.hash").lstrip("#")
    page.click("#export-button")
    with page.expect_download() as info:
        page.click("#export-menu button[data-format=json]")
    download = info.value
    with open(download.path(), encoding="utf-8") as f:
        exported = json.load(f)
    direct = session.api("GET", f"/conversations/{cid}/export?format=json").json()
    exported.pop("exported_at", None), direct.pop("exported_at", None)
    assert exported == direct
    assert session.stored(reply)["content"] in [m["content"] for m in exported["messages"]]
    page.click("#export-button")
    with page.expect_download() as info:
        page.click("#export-menu button[data-format=md]")
    with open(info.value.path(), encoding="utf-8") as f:
        assert "print('hi')" in f.read()
    session.check()
