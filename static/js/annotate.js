/* The annotation page: keyboard-first answering, span marking, ranking, safe submit.
 *
 * The item area (#item) is replaced by htmx after every submit/skip; setup() runs again on it.
 * Answers are collected in display order (response A is what the annotator saw on the left);
 * the server maps them back to the stored order of the item's responses.
 * Span offsets are counted in Unicode code points of the stored response text, as Python does.
 */
(function () {
  "use strict";

  let s = null; // state of the current item
  // htmx copies these attributes from the old element to its same-id successor when it settles a
  // swap; a `style` attribute (the span menu's position) would be set inline, which the page's
  // Content-Security-Policy refuses.
  if (window.htmx) htmx.config.attributesToSettle = ["class", "width", "height"];
  // htmx wires up swapped-in content (the new item's form) in its settle step, 20 ms after the
  // swap by default; until then a submit triggered on the form sends nothing. Settling at once
  // leaves no such window.
  if (window.htmx) htmx.config.defaultSettleDelay = 0;

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  function setup() {
    const form = $("#item-form");
    if (!form) { s = null; return; }
    const data = JSON.parse($("#item-data").textContent);
    s = {
      form,
      data,
      schema: data.schema,
      fields: $$(".field", form),
      active: 0,
      spans: [],           // {position, start, end, category}  (code point offsets)
      pending: null,       // selection waiting for a category
      picked: 0,           // ranking cursor
      visibleMs: 0,
      shownAt: performance.now(),
      submitting: false,
      retries: 0,
    };
    if (s.schema.spans) renderAllSpans();
    if (s.schema.ranking) setupRanking();
    // On a wide screen the first question is scrolled just into view (above the action bar); on a
    // phone the page opens at the prompt, which is read first there.
    setActive(0, { scroll: window.matchMedia("(min-width: 721px)").matches });
    const lease = $("#lease-until");
    if (lease && lease.dateTime) {
      // The lease's end in the annotator's own clock, not the server's.
      lease.textContent = new Date(lease.dateTime).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }
    tick();
  }

  // --- time on item: only while the tab is visible -------------------------------------------
  function elapsedMs() {
    if (!s) return 0;
    return s.visibleMs + (document.hidden ? 0 : performance.now() - s.shownAt);
  }
  document.addEventListener("visibilitychange", () => {
    if (!s) return;
    if (document.hidden) s.visibleMs += performance.now() - s.shownAt;
    else s.shownAt = performance.now();
  });
  function tick() {
    const t = $("#timer");
    if (t && s) {
      const sec = Math.floor(elapsedMs() / 1000);
      t.textContent = Math.floor(sec / 60) + ":" + String(sec % 60).padStart(2, "0");
    }
  }
  setInterval(tick, 1000);

  // --- fields and focus ------------------------------------------------------------------------
  function setActive(i, opts) {
    if (!s || !s.fields.length) return;
    const { scroll = true, focus = true } = opts || {};
    s.active = (i + s.fields.length) % s.fields.length;
    s.fields.forEach((f, k) => f.classList.toggle("active", k === s.active));
    const f = s.fields[s.active];
    if (scroll) f.scrollIntoView({ block: "nearest" });
    if (focus && f.dataset.field === "justification") $("textarea", f).focus({ preventScroll: !scroll });
  }
  // After an answer by key: on to the next question, but never into the justification box (keys
  // would then type into it) and never round to the first question.
  function advance() {
    const next = s.active + 1;
    if (next >= s.fields.length) return;
    setActive(next, { focus: false });
  }
  function activeField() { return s && s.fields[s.active]; }

  function chooseOption(field, n) {
    const inputs = $$("input[type=radio]", field);
    if (n < 1 || n > inputs.length) return false;
    inputs[n - 1].checked = true;
    inputs[n - 1].dispatchEvent(new Event("change", { bubbles: true }));
    return true;
  }

  // --- spans ----------------------------------------------------------------------------------
  const cp = (str) => Array.from(str).length;               // code points in a JS string
  function cpToUnits(str, n) { return Array.from(str).slice(0, n).join("").length; }

  function renderSpans(position) {
    const box = $(`.span-text[data-position="${position}"]`, s.form);
    const text = s.data.texts[position];
    const marks = s.spans.map((m, k) => ({ ...m, k })).filter((m) => m.position === position)
      .sort((a, b) => a.start - b.start);
    const cats = s.schema.spans.categories.map((c) => c.name);
    box.textContent = "";
    let at = 0; // code points
    const chars = Array.from(text);
    for (const m of marks) {
      if (m.start > at) box.appendChild(document.createTextNode(chars.slice(at, m.start).join("")));
      const el = document.createElement("mark");
      el.textContent = chars.slice(m.start, m.end).join("");
      el.dataset.cat = String(cats.indexOf(m.category) % 5);
      el.title = m.category;
      box.appendChild(el);
      at = m.end;
    }
    if (at < chars.length) box.appendChild(document.createTextNode(chars.slice(at).join("")));
    const list = $(`.span-list[data-position="${position}"]`, s.form);
    list.textContent = "";
    for (const m of marks) {
      const li = document.createElement("li");
      const cat = document.createElement("strong");
      cat.textContent = m.category;
      const quote = document.createElement("span");
      quote.className = "quote";
      quote.textContent = "“" + chars.slice(m.start, m.end).join("") + "”";
      const rm = document.createElement("button");
      rm.type = "button";
      rm.className = "secondary small";
      rm.textContent = "×";
      rm.title = "remove this mark";
      rm.dataset.removeSpan = String(m.k);
      li.append(cat, quote, rm);
      list.appendChild(li);
    }
  }
  function renderAllSpans() { s.data.texts.forEach((_, i) => renderSpans(i)); }

  function offsetIn(box, node, offset) {
    // UTF-16 offset of (node, offset) from the start of box's text, then code points.
    const range = document.createRange();
    range.selectNodeContents(box);
    range.setEnd(node, offset);
    return cp(range.toString());
  }

  function captureSelection() {
    const sel = window.getSelection();
    if (!sel || sel.isCollapsed || !sel.rangeCount) return null;
    const range = sel.getRangeAt(0);
    const box = range.commonAncestorContainer.nodeType === 1
      ? range.commonAncestorContainer.closest(".span-text")
      : range.commonAncestorContainer.parentElement.closest(".span-text");
    if (!box || !s.form.contains(box)) return null;
    const position = Number(box.dataset.position);
    let start = offsetIn(box, range.startContainer, range.startOffset);
    let end = offsetIn(box, range.endContainer, range.endOffset);
    if (end <= start) return null;
    return { position, start, end, rect: range.getBoundingClientRect() };
  }

  function showSpanMenu(sel) {
    const menu = $("#span-menu");
    s.pending = sel;
    menu.hidden = false;
    menu.style.left = Math.max(8, window.scrollX + sel.rect.left) + "px";
    menu.style.top = window.scrollY + sel.rect.bottom + 6 + "px";
  }
  function hideSpanMenu() {
    const menu = $("#span-menu");
    if (menu) menu.hidden = true;
    if (s) s.pending = null;
  }
  function addSpan(category) {
    const p = s.pending;
    hideSpanMenu();
    if (!p) return;
    const clash = s.spans.find((m) => m.position === p.position && m.start < p.end && p.start < m.end);
    if (clash) { showError("That selection overlaps a mark already made; remove it first."); return; }
    s.spans.push({ position: p.position, start: p.start, end: p.end, category });
    window.getSelection().removeAllRanges();
    renderSpans(p.position);
    showError("");
  }
  function removeSpan(k) {
    if (!s.spans[k]) return;
    s.spans.splice(k, 1);
    renderAllSpans(); // every list: the marks after k, in any response, have moved up one
    showError("");
  }

  // An answer changed: a message about the earlier state no longer applies.
  for (const type of ["change", "input"]) {
    document.addEventListener(type, (e) => { if (s && s.form.contains(e.target)) showError(""); });
  }

  document.addEventListener("mouseup", (e) => {
    if (!s || !s.schema.spans) return;
    if (e.target.closest("#span-menu")) return;
    setTimeout(() => {
      const sel = captureSelection();
      if (sel) showSpanMenu(sel); else hideSpanMenu();
    }, 0);
  });

  // --- ranking --------------------------------------------------------------------------------
  function rankCards() { return $$("#rank-list > .rank-card", s.form); }
  function renumber() {
    let rank = 0;
    rankCards().forEach((card, i) => {
      if (i === 0) card.dataset.tie = "0";
      if (card.dataset.tie !== "1") rank += 1;
      $(".rank-no", card).textContent = rank;
      card.classList.toggle("picked", i === s.picked);
    });
  }
  function setupRanking() {
    const list = $("#rank-list", s.form);
    if (window.Sortable) {
      window.Sortable.create(list, {
        animation: 120,
        forceFallback: true, // mouse/touch events rather than native drag-and-drop: same on every browser
        handle: ".rank-card",
        delay: 250, // on a touch screen a swipe scrolls the page; press and hold to drag a card
        delayOnTouchOnly: true,
        onEnd: (evt) => { s.picked = evt.newIndex; s.rankTouched = true; renumber(); },
      });
    }
    renumber();
  }
  function moveCard(delta) {
    const cards = rankCards();
    const i = s.picked, j = i + delta;
    if (j < 0 || j >= cards.length) return;
    const list = $("#rank-list", s.form);
    if (delta > 0) list.insertBefore(cards[j], cards[i]); else list.insertBefore(cards[i], cards[j]);
    s.picked = j;
    s.rankTouched = true;
    renumber();
  }
  function toggleTie(card) {
    if (!s.schema.ranking.allow_ties || !card || card === rankCards()[0]) return;
    card.dataset.tie = card.dataset.tie === "1" ? "0" : "1";
    s.rankTouched = true;
    renumber();
  }

  // --- collecting and submitting ------------------------------------------------------------
  function collect() {
    const sc = s.schema, payload = {};
    const n = s.data.count;
    const problems = [];
    if (sc.pairwise) {
      const v = $("input[name=pairwise]:checked", s.form);
      if (!v) problems.push("choose which response is better");
      else {
        const [choice, strength] = v.value.split(":");
        payload.pairwise = { choice, strength: Number(strength) };
      }
    }
    if (sc.ranking) {
      const ranks = new Array(n);
      let rank = 0;
      rankCards().forEach((card, i) => {
        if (i === 0 || card.dataset.tie !== "1") rank += 1;
        ranks[Number(card.dataset.position)] = rank;
      });
      payload.ranking = ranks;
    }
    if (sc.rubric) {
      const ratings = Array.from({ length: n }, () => ({}));
      let missing = 0;
      for (const cell of $$(".rubric-cell", s.form)) {
        const v = $("input:checked", cell);
        if (v) ratings[Number(cell.dataset.position)][cell.dataset.aspect] = Number(v.value);
        else missing += 1;
      }
      if (missing && sc.rubric.required !== false) problems.push(`rate every aspect of every response (${missing} left)`);
      if (!missing || sc.rubric.required !== false || ratings.some((r) => Object.keys(r).length)) payload.rubric = ratings;
      if (missing && sc.rubric.required === false && ratings.every((r) => !Object.keys(r).length)) delete payload.rubric;
    }
    if (sc.spans) {
      payload.spans = s.spans.map((m) => ({ response: m.position, start: m.start, end: m.end, category: m.category }));
      if (sc.spans.required && !payload.spans.length) problems.push("mark at least one span");
    }
    const just = $("textarea[name=justification]", s.form);
    if (just) {
      payload.justification = just.value;
      if (sc.pairwise && sc.pairwise.justification === "required" && !just.value.trim()) problems.push("write a justification");
    }
    return { payload, problems };
  }

  function showError(msg) {
    const box = $("#item-error");
    if (box) box.textContent = msg;
  }

  function submit() {
    if (!s || s.submitting) return;
    const { payload, problems } = collect();
    if (problems.length) { showError("Before submitting: " + problems.join("; ") + "."); return; }
    if (s.schema.ranking && !s.rankTouched && !s.rankConfirmed) {
      // The responses come in a random order: sending it unchanged is more often a slip than a ranking.
      s.rankConfirmed = true;
      showError("The order is unchanged from the random one shown. Press Enter again to submit it as your ranking.");
      return;
    }
    s.form.elements.payload.value = JSON.stringify(payload);
    s.form.elements.time_ms.value = String(Math.round(elapsedMs()));
    s.submitting = true;
    htmx.trigger(s.form, "submit");
  }

  document.addEventListener("submit", (e) => {
    // A plain Enter in the form or a click on Submit: route through submit() so the payload is built.
    if (!s || e.target !== s.form) return;
    if (!s.form.elements.payload.value) { e.preventDefault(); e.stopPropagation(); submit(); }
  }, true);

  // A submit that did not get through is sent again by itself. The server's submit is idempotent
  // (keyed by the assignment in its URL), so a resend never stores a second judgment. Retried:
  // network errors (no answer, or the answer lost) and 5xx answers, with exponential backoff
  // (0.8, 1.6, 3.2, 6.4, then 8 s; at least the Retry-After of a 503, which the server sends while
  // its database restarts) for up to 8 tries; after that the answer stays on the page.
  const fromForm = (e) => s && e.detail.elt === s.form;
  // A refusal keeps the answer on the page. The server words its refusals as plain text; anything
  // else (an error page) is summed up rather than shown as markup.
  function refusalText(xhr) {
    if ((xhr.getResponseHeader("Content-Type") || "").startsWith("text/plain") && xhr.responseText) {
      return xhr.responseText;
    }
    if (xhr.status === 403) {
      return "The server refused this request (403): you may have logged in again in another tab. " +
        "Reload the page to go on; the answer on this page would need to be given again.";
    }
    if (xhr.status === 404) return "This item is no longer yours to answer (404). Reload the page for the next one.";
    return `The server refused the answer (${xhr.status}).`;
  }
  document.body.addEventListener("htmx:responseError", (e) => {
    if (!s) return;
    const xhr = e.detail.xhr;
    if (xhr.status >= 500 && fromForm(e)) return retry(retryAfterMs(xhr));
    if (xhr.status >= 500) return showError("The server is unavailable for a moment: please try again.");
    if (xhr.status === 403 && fromForm(e) && !s.csrfRefreshed) return refreshTokenAndResend(xhr);
    if (xhr.status === 403 && !s.csrfRefreshed) {
      // A skip or a flag after logging in again: take the new token, and let the annotator repeat.
      refreshToken()
        .then(() => showError("Your login changed since this page was opened: press the key again."))
        .catch(() => showError(refusalText(xhr)));
      return;
    }
    keepAnswer(refusalText(xhr));
  });
  // The submit did not go through: the answer stays on the page, ready to be sent again.
  function keepAnswer(message) {
    s.submitting = false;
    s.form.elements.payload.value = "";
    showError(message);
  }
  // Logging in again (in another tab, after the session ended) replaces the CSRF token, so this
  // page's token from <body hx-headers> is refused (403). The page then asks for the new token once
  // and sends the answer again.
  let csrfToken = null;
  document.body.addEventListener("htmx:configRequest", (e) => {
    if (csrfToken) e.detail.headers["X-CSRFToken"] = csrfToken;
    const guidelines = $("#guidelines");
    if (guidelines) e.detail.headers["X-Guidelines-Version"] = guidelines.dataset.version;
  });
  function refreshToken() {
    s.csrfRefreshed = true;
    return fetch($("#item").dataset.csrfUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((d) => { csrfToken = d.token; });
  }
  function refreshTokenAndResend(xhr) {
    const form = s.form;
    refreshToken()
      .then(() => { if (s && s.form === form) htmx.trigger(form, "submit"); })
      .catch(() => { if (s && s.form === form) keepAnswer(refusalText(xhr)); });
  }
  document.body.addEventListener("htmx:sendError", (e) => {
    if (fromForm(e)) retry(0);
    else showError("Connection problem: please try again.");
  });
  function retryAfterMs(xhr) {
    const seconds = Number(xhr.getResponseHeader("Retry-After"));
    return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, 30) * 1000 : 0;
  }
  function retry(atLeastMs) {
    if (!s) return;
    const form = s.form;
    s.retries += 1;
    if (s.retries > 8) {
      s.retries = 0;
      keepAnswer("Cannot reach the server. Your answer is kept on this page: press Enter to try again.");
      return;
    }
    showError(`Connection problem, retrying (${s.retries})…`);
    const delay = Math.max(atLeastMs, Math.min(8000, 400 * 2 ** s.retries));
    setTimeout(() => { if (s && s.form === form) htmx.trigger(form, "submit"); }, delay);
  }
  // A new item replaces the old: the old one's state goes at once (keys wait for the new one), and
  // focus leaves the old one's fields (htmx would put it back on the same-id field of the new item,
  // the justification box, where keys would type). The new item is set up once htmx has wired it.
  document.body.addEventListener("htmx:beforeSwap", (e) => {
    if (e.detail.target.id !== "item" || !e.detail.shouldSwap) return;
    const focused = document.activeElement;
    if (focused && e.detail.target.contains(focused)) focused.blur();
    s = null;
  });
  document.body.addEventListener("htmx:afterSettle", (e) => {
    if (e.detail.target.id !== "item") return;
    const top = e.detail.target.getBoundingClientRect().top;
    if (top < 0) window.scrollBy(0, top - 8); // the next item starts at its top, not mid-page
    setup();
  });

  function skip() { if (s) htmx.trigger("#skip-btn", "click"); }
  function startFlag() {
    const input = $("#flag-reason");
    if (!input) return;
    input.hidden = false;
    input.focus();
  }
  function sendFlag() {
    const input = $("#flag-reason");
    if (!input.value.trim()) { showError("Say why you flag this item."); return; }
    // The CSRF header comes from hx-headers on <body>, as for every htmx request.
    htmx.ajax("POST", $("#skip-btn").getAttribute("hx-post"), {
      source: "#skip-btn", target: "#item", values: { reason: input.value, flag: "1" },
    });
  }

  // --- keys -----------------------------------------------------------------------------------
  function toggle(id) { const el = $(id); if (el) el.hidden = !el.hidden; }

  document.addEventListener("keydown", (e) => {
    if (e.target.id === "flag-reason") {
      if (e.key === "Enter") { e.preventDefault(); sendFlag(); }
      if (e.key === "Escape") { e.target.hidden = true; e.target.blur(); }
      return;
    }
    const typing = e.target.matches("textarea, input[type=text], input[type=password], select");
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { e.preventDefault(); submit(); return; }
    if (typing) {
      if (e.key === "Escape") { e.target.blur(); e.preventDefault(); }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "?") { toggle("#help"); e.preventDefault(); return; }
    if (e.key === "Escape") { $("#help").hidden = true; hideSpanMenu(); return; }
    if (!$("#help").hidden) { e.preventDefault(); return; } // the help is open: only ? and Esc act
    if (e.key === "g") { toggle("#guidelines"); return; }
    if (!s) return;
    const field = activeField();
    if (s.pending && /^[1-9]$/.test(e.key)) {
      const cat = s.schema.spans.categories[Number(e.key) - 1];
      if (cat) addSpan(cat.name);
      e.preventDefault();
      return;
    }
    switch (e.key) {
      case "Enter": e.preventDefault(); submit(); return;
      case "n": e.preventDefault(); setActive(s.active + 1); return;
      case "p": e.preventDefault(); setActive(s.active - 1); return;
      case "s": skip(); return;
      case "f": e.preventDefault(); startFlag(); return;
      case "w": {
        const i = s.fields.findIndex((f) => f.dataset.field === "justification");
        if (i >= 0) { e.preventDefault(); setActive(i); }
        return;
      }
      case "x": if (s.spans.length) removeSpan(s.spans.length - 1); return;
      case "t": {
        const tie = $("input[name=pairwise][value='tie:0']", s.form);
        if (tie) {
          e.preventDefault();
          tie.checked = true;
          setActive(s.fields.findIndex((f) => f.dataset.field === "pairwise"), { focus: false });
          advance();
        }
        return;
      }
    }
    if (field && field.dataset.field === "ranking") {
      const cards = rankCards();
      if (e.key === "j") { s.picked = Math.min(cards.length - 1, s.picked + 1); renumber(); return; }
      if (e.key === "k") { s.picked = Math.max(0, s.picked - 1); renumber(); return; }
      if (e.key === "J") { moveCard(1); return; }
      if (e.key === "K") { moveCard(-1); return; }
      if (e.key === "=") { toggleTie(cards[s.picked]); return; }
    }
    if (/^[1-9]$/.test(e.key) && field && (field.dataset.field === "pairwise" || field.dataset.field === "rubric")) {
      if (chooseOption(field, Number(e.key))) {
        e.preventDefault();
        advance();
      }
    }
  });

  document.addEventListener("click", (e) => {
    if (e.target.id === "help") { e.target.hidden = true; return; } // the backdrop around the help
    const t = e.target.closest("button");
    if (!t) {
      const f = e.target.closest(".field");
      if (s && f) setActive(s.fields.indexOf(f));
      return;
    }
    if (t.id === "help-btn" || t.id === "help-close") toggle("#help");
    else if (t.id === "guidelines-btn") toggle("#guidelines");
    else if (t.id === "flag-btn") { const i = $("#flag-reason"); if (i && !i.hidden && i.value.trim()) sendFlag(); else startFlag(); }
    else if (t.dataset.category) addSpan(t.dataset.category);
    else if (t.dataset.cancel) hideSpanMenu();
    else if (t.dataset.removeSpan) removeSpan(Number(t.dataset.removeSpan));
    else if (t.classList.contains("tie-toggle")) toggleTie(t.closest(".rank-card"));
  });

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
  else setup();
})();
