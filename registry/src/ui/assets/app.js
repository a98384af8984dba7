// berth's web UI: search-as-you-type over the rows of a list, and copy
// buttons. Everything works without it (the search form also filters on
// the server); this only makes it quicker.
"use strict";

function announce(text) {
  const live = document.getElementById("live");
  if (live) {
    live.textContent = text;
  }
}

function filterRows(input) {
  const term = input.value.trim().toLowerCase();
  const scope = document.querySelector(input.dataset.filter);
  if (!scope) {
    return;
  }
  let shown = 0;
  scope.querySelectorAll("[data-name]").forEach((row) => {
    const match = row.dataset.name.toLowerCase().includes(term);
    row.hidden = !match;
    if (match) {
      shown += 1;
    }
  });
  // A group with no row left is hidden too.
  scope.querySelectorAll("[data-group]").forEach((group) => {
    group.hidden = group.querySelector("[data-name]:not([hidden])") === null;
  });
  announce(shown + (shown === 1 ? " match" : " matches"));
}

function copy(button) {
  const value = button.dataset.copy;
  const done = () => {
    const before = button.textContent;
    button.textContent = "Copied";
    announce("Copied " + value);
    setTimeout(() => {
      button.textContent = before;
    }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(value).then(done, () => announce("Copy failed: select the text instead"));
  } else {
    announce("Copying needs HTTPS: select the text instead");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("input[data-filter]").forEach((input) => {
    input.addEventListener("input", () => filterRows(input));
    if (input.value) {
      filterRows(input);
    }
  });
  document.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-copy]");
    if (button) {
      copy(button);
    }
  });
});
