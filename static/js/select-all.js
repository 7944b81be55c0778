// A checkbox marked data-select-all="NAME" ticks or clears every checkbox named NAME in its table,
// and shows "some" (indeterminate) when only part are ticked. Delegated from the document, so it
// keeps working after htmx swaps the table in. A static script: the CSP runs no inline handler.
document.addEventListener("change", (event) => {
  const box = event.target;
  if (!(box instanceof HTMLInputElement) || box.type !== "checkbox") return;
  const table = box.closest("table");
  if (!table) return;
  const all = table.querySelector("input[data-select-all]");
  if (!all) return;
  const rows = [...table.querySelectorAll(`input[type=checkbox][name="${all.dataset.selectAll}"]`)];
  if (box === all) {
    rows.forEach((row) => { row.checked = all.checked; });
  } else if (rows.includes(box)) {
    const ticked = rows.filter((row) => row.checked).length;
    all.checked = ticked === rows.length;
    all.indeterminate = ticked > 0 && ticked < rows.length;
  }
});
