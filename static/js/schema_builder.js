/* The schema editor of the New-project and settings pages (annotation/_schema_editor.html).
 *
 * The server renders the builder, the YAML and the preview; htmx posts the form after each edit
 * and swaps in what changed. This file only:
 *  - records which side was edited last (#schema-from), before htmx reads the form, so the page's
 *    own submit saves what the curator last edited even when the last answer is still on its way;
 *  - keeps Enter in a builder field from submitting the whole form;
 *  - puts the sample responses' text into the preview's span-marking boxes, which the annotate
 *    page fills the same way (from #item-data) with its own script.
 */
(function () {
  "use strict";

  // htmx copies `style` (with class, width, height) onto each swapped-in element of the same id
  // when it settles a swap; setting a style attribute, even an empty one, is refused by the page's
  // Content-Security-Policy (a console error per swapped part). Nothing here is styled inline.
  if (window.htmx) htmx.config.attributesToSettle = ["class", "width", "height"];

  function mark(event) {
    const from = document.getElementById("schema-from");
    if (!from || !(event.target instanceof Element)) return;
    if (event.target.closest("#schema-builder")) from.value = "builder";
    else if (event.target.id === "id_schema") from.value = "yaml";
  }
  // Capture phase: ahead of htmx's listeners on the builder and the textarea.
  ["input", "change", "click"].forEach((type) => document.addEventListener(type, mark, true));

  document.addEventListener("keydown", (event) => {
    const t = event.target;
    if (event.key === "Enter" && t instanceof HTMLInputElement && t.closest("#schema-builder")) {
      event.preventDefault();
    }
  });

  function fillPreview() {
    const preview = document.getElementById("schema-preview");
    const data = preview && preview.querySelector("#item-data");
    if (!data) return;
    const texts = JSON.parse(data.textContent).texts || [];
    preview.querySelectorAll(".span-text[data-position]").forEach((box) => {
      box.textContent = texts[Number(box.dataset.position)] || "";
    });
  }
  document.addEventListener("htmx:oobAfterSwap", fillPreview);
  document.addEventListener("htmx:afterSettle", fillPreview);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fillPreview);
  else fillPreview();
})();
