// A field marked data-select-on-focus (a key shown once) selects its whole text when focused,
// so one copy takes it all. A static script: the Content-Security-Policy runs no inline handler.
document.addEventListener("focusin", (event) => {
  if (event.target instanceof HTMLInputElement && event.target.hasAttribute("data-select-on-focus")) {
    event.target.select();
  }
});
